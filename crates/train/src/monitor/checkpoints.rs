//! Step-numbered checkpoints (`checkpoints/step-NNNNNNNN/`), each written atomically, and
//! the strategy that decides which are saved and kept.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn_train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn_train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};

use super::shape::RunShape;

/// Where a run's position is saved beside the model, optimizer and scheduler records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckpointState {
    pub step: usize,
    pub tokens: u64,
}

/// Checkpoints as `checkpoints/step-NNNNNNNN/{model,optim,scheduler}.bpk` + `state.json`.
/// Each file is written under a temporary name and renamed; the three burn-train writers
/// meet in `step-N.tmp/`, and the last one to finish writes `state.json` and renames the
/// directory, so a `step-N/` directory is always complete.
#[derive(Clone)]
pub struct StepCheckpoints {
    pub root: PathBuf,
    pub shape: RunShape,
    finish: Arc<Mutex<()>>,
}

const PARTS: [&str; 3] = ["model", "optim", "scheduler"];

impl StepCheckpoints {
    pub fn new(root: PathBuf, shape: RunShape) -> Self {
        Self {
            root,
            shape,
            finish: Arc::default(),
        }
    }

    pub fn dir(&self, step: usize) -> PathBuf {
        self.root.join(format!("step-{step:08}"))
    }

    /// Steps of the complete checkpoints on disk, oldest first.
    pub fn steps(&self) -> std::io::Result<Vec<usize>> {
        let mut steps: Vec<usize> = std::fs::read_dir(&self.root)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let step = p
                    .file_name()?
                    .to_str()?
                    .strip_prefix("step-")?
                    .parse()
                    .ok()?;
                p.join("state.json").is_file().then_some(step)
            })
            .collect();
        steps.sort();
        Ok(steps)
    }

    /// One writer's part of the checkpoint of burn-train epoch `epoch`.
    pub fn part(&self, part: &'static str) -> StepCheckpointPart {
        StepCheckpointPart {
            all: self.clone(),
            part,
        }
    }

    fn save_bytes(&self, epoch: usize, part: &str, bytes: &[u8]) -> std::io::Result<()> {
        let step = self.shape.step_of_epoch(epoch);
        let (dir, tmp) = (self.dir(step), self.dir(step).with_extension("tmp"));
        std::fs::create_dir_all(&tmp)?;
        ember_data::write_atomic_io(&tmp.join(format!("{part}.bpk")), bytes)?;
        let _one_at_a_time = self.finish.lock().expect("checkpoint lock");
        if PARTS.iter().all(|p| tmp.join(format!("{p}.bpk")).is_file()) {
            let state = CheckpointState {
                step,
                tokens: self.shape.tokens_at(step),
            };
            ember_data::write_atomic_io(
                &tmp.join("state.json"),
                serde_json::to_string_pretty(&state)
                    .expect("serializes")
                    .as_bytes(),
            )?;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::rename(&tmp, &dir)?;
            ember_data::sync_parent(&dir);
        }
        Ok(())
    }
}

/// One of the three burn-train checkpointers (model, optimizer, scheduler).
pub struct StepCheckpointPart {
    all: StepCheckpoints,
    part: &'static str,
}

impl<R: Checkpoint> Checkpointer<R> for StepCheckpointPart {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        self.all
            .save_bytes(epoch, self.part, &bytes)
            .map_err(CheckpointerError::IOError)
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        let dir = self.all.dir(self.all.shape.step_of_epoch(epoch));
        let _one_at_a_time = self.all.finish.lock().expect("checkpoint lock");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(CheckpointerError::IOError)?;
        }
        Ok(())
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let path = self
            .all
            .dir(self.all.shape.step_of_epoch(epoch))
            .join(format!("{}.bpk", self.part));
        let bytes = std::fs::read(&path).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
            .map_err(CheckpointerError::Record)
    }
}

/// Save after the epochs that end on a multiple of `every` steps and after the last step;
/// keep the newest `keep`.
pub struct EveryNSteps {
    pub shape: RunShape,
    pub every: usize,
    pub keep: usize,
    /// Epochs with a checkpoint, oldest first.
    pub saved: VecDeque<usize>,
}

impl CheckpointingStrategy for EveryNSteps {
    fn checkpointing(&mut self, epoch: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        let step = self.shape.step_of_epoch(epoch);
        if step % self.every != 0 && step != self.shape.max_steps {
            return Vec::new();
        }
        let mut actions = vec![CheckpointingAction::Save];
        self.saved.push_back(epoch);
        while self.saved.len() > self.keep.max(1) {
            let old = self.saved.pop_front().expect("non-empty");
            actions.push(CheckpointingAction::Delete(old));
        }
        actions
    }
}
