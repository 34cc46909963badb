//! safetensors float tensors as f32.

use safetensors::Dtype;

/// Little-endian F32, BF16 or F16 bytes as f32 values; `None` for any other dtype (the
/// caller names the file and tensor in its error).
pub fn decode_floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_float_dtype_decodes_and_others_are_refused() {
        let v = [1.5f32, -2.25];
        let f32s: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let bf16s: Vec<u8> = v
            .iter()
            .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
            .collect();
        let f16s: Vec<u8> = v
            .iter()
            .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
            .collect();
        for (dtype, bytes) in [(Dtype::F32, f32s), (Dtype::BF16, bf16s), (Dtype::F16, f16s)] {
            assert_eq!(decode_floats(dtype, &bytes).unwrap(), v);
        }
        assert!(decode_floats(Dtype::I32, &[0; 4]).is_none());
    }
}
