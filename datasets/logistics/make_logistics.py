#!/usr/bin/env python3
"""Generate the synthetic Ember logistics instruction dataset.

Deterministic (fixed seeds), python3 standard library only.
Writes train.jsonl (3000 rows) and test.jsonl (300 rows) next to this file.
Every answer is derivable from its instruction by the rules in README.md.

    python3 datasets/logistics/make_logistics.py
"""
import datetime as dt
import json
import os
import random

TRAIN_SEED = 20260101
TEST_SEED = 20269999
N_TRAIN = 3000
N_TEST = 300
CATEGORIES = ["shipment_status", "routing", "delivery_exception", "customs"]
MAX_INSTR = 400
MAX_ANSWER = 120

OUT_DIR = os.path.dirname(os.path.abspath(__file__))


def dumps(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------- shared data
CITIES = [
    "Rotterdam", "Hamburg", "Antwerp", "Felixstowe", "Le Havre", "Valencia",
    "Genoa", "Gdansk", "Shanghai", "Ningbo", "Shenzhen", "Singapore", "Busan",
    "Yokohama", "Dubai", "Mumbai", "Los Angeles", "Long Beach", "New York",
    "Savannah", "Houston", "Vancouver", "Montreal", "Santos", "Veracruz",
    "Durban", "Sydney", "Melbourne", "Chicago", "Memphis", "Leipzig", "Lyon",
    "Milan", "Madrid", "Warsaw", "Prague", "Vienna", "Copenhagen", "Dublin",
    "Manchester", "Toronto", "Atlanta", "Dallas", "Seattle", "Osaka",
]
PARCEL_CARRIERS = [
    "DHL Express", "FedEx", "UPS", "DPD", "GLS", "PostNL", "Royal Mail",
    "Canada Post", "Australia Post", "Yamato", "Colissimo", "Correos",
]
LANE_CARRIERS = {
    "air": ["DHL Aviation", "FedEx Express", "Lufthansa Cargo", "Emirates SkyCargo",
            "Cargolux", "Qatar Cargo"],
    "road": ["DB Schenker", "DSV Road", "Girteka", "XPO", "Dachser", "Raben"],
    "rail": ["DB Cargo", "RZD Logistics", "Union Pacific", "CN Rail",
             "PKP Cargo", "BNSF"],
    "sea": ["Maersk", "MSC", "CMA CGM", "Hapag-Lloyd", "COSCO", "ONE",
            "Evergreen"],
}
# (min transit days, max transit days, min cost, max cost) per mode
MODE_RANGES = {
    "air": (1, 4, 2400, 6000),
    "road": (2, 8, 900, 2600),
    "rail": (8, 18, 600, 1500),
    "sea": (14, 35, 250, 1000),
}
NAMES = ["Ana Lopez", "Ben Carter", "Chen Wei", "Dara Okafor", "Eva Novak",
         "Farid Haddad", "Grace Kim", "Hugo Martin", "Ines Silva", "Jonas Berg",
         "Kaito Sato", "Lena Fischer", "Maya Patel", "Noah Dubois",
         "Olga Ivanova", "Priya Nair", "Quinn Murphy", "Rosa Bianchi"]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
          "Oct", "Nov", "Dec"]


def rand_date(rng, start=(2026, 1, 5), end=(2026, 11, 20)):
    a = dt.date(*start)
    b = dt.date(*end)
    return a + dt.timedelta(days=rng.randint(0, (b - a).days))


def iso(d):
    return d.isoformat()


def human(d):
    return "%d %s %d" % (d.day, MONTHS[d.month - 1], d.year)


def fmt_date(rng, d, style=None):
    style = style if style is not None else rng.random() < 0.7
    return iso(d) if style else human(d)


def tracking(rng):
    kind = rng.randrange(4)
    digits = "0123456789"
    alnum = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
    if kind == 0:
        return "1Z" + "".join(rng.choice(alnum) for _ in range(16))
    if kind == 1:
        return "JD" + "".join(rng.choice(digits) for _ in range(16))
    if kind == 2:
        return "".join(rng.choice(digits) for _ in range(12))
    return (rng.choice(["RR", "CP", "LX", "EE"])
            + "".join(rng.choice(digits) for _ in range(9))
            + rng.choice(["NL", "GB", "DE", "FR", "CA", "AU"]))


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


# ------------------------------------------------------------ shipment_status
STATUS_PHRASES = {
    "picked_up": ["Picked up by carrier", "Collected from sender",
                  "Parcel picked up"],
    "in_transit": ["Departed facility", "In transit to next facility",
                   "Left origin depot"],
    "at_hub": ["Arrived at sorting hub", "Arrived at distribution center",
               "Processed at hub"],
    "out_for_delivery": ["Out for delivery", "With courier for delivery",
                         "Loaded on delivery vehicle"],
    "delivered": ["Delivered", "Delivered to recipient",
                  "Delivered, signed for"],
}
STATUS_ORDER = ["picked_up", "in_transit", "at_hub", "out_for_delivery",
                "delivered"]

STATUS_TEMPLATES = [
    "Tracking {trk} ({carrier}). Scan history: {scans}.{rem} What is the "
    "current status and ETA? Reply as JSON with status and eta.",
    "Customer asks about {carrier} parcel {trk}. Scans: {scans}.{rem} Give "
    "latest status and expected delivery date (JSON: status, eta).",
    "{carrier} shipment {trk}, scans listed newest first: {scans}.{rem} "
    "Report status and eta as JSON.",
    "Where is my package {trk}? {carrier} events: {scans}.{rem} Return JSON "
    "with keys status and eta (YYYY-MM-DD).",
    "Status check for {trk} via {carrier}. Event log: {scans}.{rem} Output "
    "the last status and the ETA as JSON.",
]


def gen_status(rng):
    final = rng.choice(STATUS_ORDER)
    fi = STATUS_ORDER.index(final)
    # monotone path picked_up -> ... -> final, 1 to 4 scans
    if fi == 0:
        path = ["picked_up"]
    else:
        between = STATUS_ORDER[1:fi]
        k = rng.randint(0, min(2, len(between)))
        mid = sorted(rng.sample(range(len(between)), k))
        path = ["picked_up"] + [between[i] for i in mid] + [final]
    d = rand_date(rng, end=(2026, 11, 25))
    ti = rng.randrange(len(STATUS_TEMPLATES))
    newest_first = ti == 2
    use_iso = rng.random() < 0.7
    scans = []
    origin, hub, dest = rng.sample(CITIES, 3)
    where = {"picked_up": origin, "in_transit": origin, "at_hub": hub,
             "out_for_delivery": dest, "delivered": dest}
    for k, st in enumerate(path):
        if k > 0:
            d = d + dt.timedelta(days=rng.randint(1, 3))
        scans.append((d, where[st], rng.choice(STATUS_PHRASES[st])))
    last_date = scans[-1][0]
    if final == "delivered":
        rem = ""
        eta = last_date
    else:
        n = {"picked_up": rng.randint(2, 7), "in_transit": rng.randint(1, 5),
             "at_hub": rng.randint(1, 4),
             "out_for_delivery": rng.randint(0, 1)}[final]
        rem = rng.choice([
            " Carrier quotes {n} more transit {dd}.",
            " Remaining transit time: {n} {dd}.",
            " {n} further {dd} in transit expected.",
        ]).format(n=n, dd="day" if n == 1 else "days")
        eta = last_date + dt.timedelta(days=n)
    shown = list(reversed(scans)) if newest_first else scans
    scan_txt = "; ".join("%s %s: %s" % (fmt_date(rng, s[0], use_iso), s[1], s[2])
                         for s in shown)
    instr = STATUS_TEMPLATES[ti].format(
        trk=tracking(rng), carrier=rng.choice(PARCEL_CARRIERS), scans=scan_txt,
        rem=rem)
    return instr, {"eta": iso(eta), "status": final}


# -------------------------------------------------------------------- routing
ROUTING_TEMPLATES = [
    "Ship {cargo} from {o} to {d}, ready on {ship}. It must arrive by "
    "{deadline}. Options: {lanes}. Pick the cheapest lane that meets the "
    "deadline; JSON with lane, cost, arrival (or lane none).",
    "Routing request {ref}: {o} -> {d}, {cargo}, departs {ship}, needed "
    "within {days}. Lanes: {lanes}. Choose the cheapest on-time lane and give "
    "lane, cost, arrival as JSON.",
    "Which lane should we book? {cargo}, {o} to {d}, ship date {ship}, "
    "deadline {deadline}. {lanes}. Answer JSON: cheapest lane arriving on or "
    "before the deadline, its cost and arrival date.",
    "Quote table for {o}-{d} ({cargo}), dispatch {ship}, max transit "
    "{days}: {lanes}. Select the lowest-cost lane within the limit; JSON with "
    "lane, cost, arrival.",
]
CARGOS = ["2 pallets of auto parts", "a 20ft container of furniture",
          "1 pallet of electronics", "3 pallets of apparel",
          "a crate of machine tools", "5 pallets of beverages",
          "a 40ft container of tiles", "4 pallets of medical supplies",
          "2 crates of spare parts", "6 pallets of paper goods"]


def gen_routing(rng):
    want_feasible = rng.random() < 0.85
    while True:
        n = rng.randint(2, 4)
        modes = [rng.choice(list(MODE_RANGES)) for _ in range(n)]
        lanes = []
        for m in modes:
            t0, t1, c0, c1 = MODE_RANGES[m]
            lanes.append({"mode": m, "carrier": rng.choice(LANE_CARRIERS[m]),
                          "days": rng.randint(t0, t1),
                          "cost": rng.randrange(c0, c1, 5)})
        costs = [l["cost"] for l in lanes]
        if len(set(costs)) != len(costs):
            continue
        allowed = rng.randint(2, 30)
        ok = [l for l in lanes if l["days"] <= allowed]
        if bool(ok) != want_feasible:
            continue
        # make the task non-trivial most of the time: the overall cheapest
        # lane should often be too slow
        if ok and min(lanes, key=lambda l: l["cost"]) in ok and rng.random() < 0.5:
            continue
        break
    labels = "ABCD"
    for i, l in enumerate(lanes):
        l["label"] = labels[i]
    ship = rand_date(rng, end=(2026, 11, 25))
    deadline = ship + dt.timedelta(days=allowed)
    use_iso = rng.random() < 0.75
    cur = rng.choice(["USD ", "$"])
    lane_txt = "; ".join(
        "%s) %s %s, %s, %s%d" % (l["label"], l["carrier"], l["mode"],
                                 plural(l["days"], "day"), cur, l["cost"])
        for l in lanes)
    ti = rng.randrange(len(ROUTING_TEMPLATES))
    instr = ROUTING_TEMPLATES[ti].format(
        cargo=rng.choice(CARGOS), o=rng.choice(CITIES[:28]),
        d=rng.choice(CITIES[28:] + CITIES[:8]),
        ship=fmt_date(rng, ship, use_iso), deadline=fmt_date(rng, deadline, use_iso),
        days=plural(allowed, "day"), lanes=lane_txt,
        ref="RQ-%05d" % rng.randint(1, 99999))
    if ok:
        best = min(ok, key=lambda l: l["cost"])
        ans = {"arrival": iso(ship + dt.timedelta(days=best["days"])),
               "cost": best["cost"], "lane": best["label"]}
    else:
        ans = {"lane": "none", "reason": "no_lane_meets_deadline"}
    return instr, ans


# --------------------------------------------------------- delivery_exception
EXC_EVENTS = {
    "address_not_found": ("ADR", [
        "the driver could not locate the address",
        "the street number does not exist",
        "the address is incomplete and no such building was found",
        "the GPS location led to an empty lot",
    ]),
    "customer_absent": ("ABS", [
        "nobody was home",
        "the recipient was not available and there was no safe place",
        "no one answered the door",
        "the consignee was out",
    ]),
    "damaged": ("DMG", [
        "the box was crushed and the contents are visibly broken",
        "the parcel arrived wet and torn",
        "the package was damaged at the depot",
        "the carton is split open with items broken",
    ]),
    "refused": ("REF", [
        "the recipient refused to accept the parcel",
        "the consignee declined the delivery",
        "the customer refused the shipment at the door",
        "the receiver would not sign and rejected it",
    ]),
    "weather": ("WTH", [
        "a snowstorm closed the roads",
        "flooding blocked the delivery route",
        "a hurricane warning halted deliveries",
        "ice made the route unsafe",
    ]),
    "customs_hold": ("CUS", [
        "the parcel is held by customs pending review",
        "customs requested additional paperwork",
        "the shipment was stopped at border inspection",
        "customs flagged the declaration as incomplete",
    ]),
}
EXC_ACTION = {
    "address_not_found": "contact_customer",
    "damaged": "file_damage_claim",
    "refused": "return_to_sender",
    "weather": "reschedule",
    "customs_hold": "request_customs_docs",
}
EXC_TEMPLATES = [
    "Driver report for {trk} ({carrier}), {city}, {date}, attempt {a} of 3: "
    "{event}. Give the exception code and next action as JSON.",
    "Delivery attempt {a} of 3 for parcel {trk} failed on {date} in {city} "
    "because {event}. Which exception code applies and what is the next "
    "action? JSON with code and action.",
    "{carrier} exception on {date}: {event} (shipment {trk}, recipient "
    "{name}, attempt {a}/3). Return JSON: code, action.",
    "Classify this delivery exception. Tracking {trk}, city {city}, attempt "
    "{a} of 3. Note from courier {name}: {event}. Answer with JSON code and "
    "action.",
]


def gen_exception(rng):
    ev = rng.choice(list(EXC_EVENTS))
    code, phrases = EXC_EVENTS[ev]
    a = rng.randint(1, 3)
    if ev == "customer_absent":
        action = "hold_at_pickup_point" if a == 3 else "reattempt_next_day"
    else:
        action = EXC_ACTION[ev]
    ti = rng.randrange(len(EXC_TEMPLATES))
    instr = EXC_TEMPLATES[ti].format(
        trk=tracking(rng), carrier=rng.choice(PARCEL_CARRIERS),
        city=rng.choice(CITIES), date=fmt_date(rng, rand_date(rng)), a=a,
        event=rng.choice(phrases), name=rng.choice(NAMES))
    return instr, {"action": action, "code": code}


# -------------------------------------------------------------------- customs
# goods -> (HS chapter, extra-document group)
GOODS = {
    "roasted coffee beans": ("09", "PC"),
    "black tea": ("09", "PC"),
    "fresh bananas": ("08", "PC"),
    "cut roses": ("06", "PC"),
    "frozen shrimp": ("03", "HC"),
    "extra virgin olive oil": ("15", "HC"),
    "chocolate bars": ("18", "HC"),
    "red wine": ("22", "EXC"),
    "whisky": ("22", "EXC"),
    "lithium-ion batteries": ("85", "DGD"),
    "perfume": ("33", "DGD"),
    "pharmaceutical tablets": ("30", "IL"),
    "medical syringes": ("90", "IL"),
    "cotton t-shirts": ("61", None),
    "wool sweaters": ("61", None),
    "leather handbags": ("42", None),
    "running shoes": ("64", None),
    "laptop computers": ("84", None),
    "smartphones": ("85", None),
    "LED light bulbs": ("85", None),
    "car tyres": ("40", None),
    "brake pads": ("87", None),
    "bicycles": ("87", None),
    "plastic toys": ("95", None),
    "board games": ("95", None),
    "wooden chairs": ("94", None),
    "ceramic tableware": ("69", None),
    "glass bottles": ("70", None),
    "steel screws": ("73", None),
    "printed books": ("49", None),
    "wristwatches": ("91", None),
    "shampoo": ("33", None),
}
# destination -> (currency, duty-free threshold). Thresholds are stated in
# every instruction; duty applies only when the value is strictly above.
DESTS = {
    "Germany": ("EUR", 150), "France": ("EUR", 150),
    "the Netherlands": ("EUR", 150),
    "Spain": ("EUR", 150), "Italy": ("EUR", 150),
    "the United Kingdom": ("GBP", 135), "the United States": ("USD", 800),
    "Canada": ("CAD", 150), "Australia": ("AUD", 1000),
    "Japan": ("JPY", 10000), "Switzerland": ("CHF", 300),
    "Singapore": ("SGD", 400), "Norway": ("NOK", 3000),
}
CUSTOMS_TEMPLATES = [
    "Customs check: {qty} of {goods} shipped from {origin} to {dest}, "
    "declared value {cur} {val}. Duty-free threshold for {dest}: {cur} {thr}. "
    "Give hs_chapter, duty (true/false) and required docs as JSON.",
    "We are exporting {goods} ({qty}) to {dest}. Declared {cur} {val}; the "
    "de minimis for {dest} is {cur} {thr}. What HS chapter, is duty due, and "
    "which documents are needed? JSON.",
    "Shipment {trk}: {goods}, value {cur} {val}, destination {dest} "
    "(duty applies above {cur} {thr}). Return JSON with hs_chapter, duty, "
    "docs.",
    "Prepare the customs summary for {qty} of {goods} to {dest}. Invoice "
    "total {cur} {val}; threshold {cur} {thr}. Answer as JSON: hs_chapter, "
    "duty, docs.",
]
QTYS = ["1 carton", "2 cartons", "5 cartons", "1 pallet", "3 pallets",
        "12 boxes", "1 parcel", "4 parcels", "20 units", "a sample lot"]
ORIGINS = ["China", "Vietnam", "India", "Brazil", "Mexico", "Turkey",
           "Kenya", "Colombia", "Italy", "Germany", "the United States", "Japan",
           "South Korea", "Thailand", "Portugal"]


def gen_customs(rng):
    goods = rng.choice(list(GOODS))
    hs, group = GOODS[goods]
    dest = rng.choice(list(DESTS))
    cur, thr = DESTS[dest]
    dutiable = rng.random() < 0.5
    while True:
        if dutiable:
            val = int(thr * rng.uniform(1.02, 12))
        else:
            val = int(thr * rng.uniform(0.05, 0.98))
        if val != thr and val > 0:
            break
    if cur in ("JPY", "NOK"):
        val = max(1, round(val, -1))
        if val == thr:
            val += 10
    duty = val > thr
    docs = ["CI"]
    if group:
        docs.append(group)
    if duty:
        docs.append("CO")
    docs.sort()
    origin = rng.choice([o for o in ORIGINS if o != dest])
    ti = rng.randrange(len(CUSTOMS_TEMPLATES))
    instr = CUSTOMS_TEMPLATES[ti].format(
        qty=rng.choice(QTYS), goods=goods, origin=origin, dest=dest, cur=cur,
        val=val, thr=thr, trk=tracking(rng))
    return instr, {"docs": docs, "duty": duty, "hs_chapter": hs}


GENERATORS = {
    "shipment_status": gen_status,
    "routing": gen_routing,
    "delivery_exception": gen_exception,
    "customs": gen_customs,
}


def make_split(seed, n, forbidden):
    rng = random.Random(seed)
    per_cat = n // len(CATEGORIES)
    assert per_cat * len(CATEGORIES) == n
    rows = []
    seen = set(forbidden)
    for cat in CATEGORIES:
        made = 0
        tries = 0
        while made < per_cat:
            tries += 1
            assert tries < per_cat * 50, "cannot produce enough unique rows"
            instr, ans = GENERATORS[cat](rng)
            if instr in seen:
                continue
            seen.add(instr)
            a = dumps(ans)
            assert len(instr) <= MAX_INSTR, (len(instr), instr)
            assert len(a) <= MAX_ANSWER, (len(a), a)
            rows.append({"category": cat, "instruction": instr, "answer": a})
            made += 1
    rng.shuffle(rows)
    return rows


def write(path, rows, first_id):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for i, r in enumerate(rows):
            rec = {"id": "lg-%05d" % (first_id + i), "category": r["category"],
                   "instruction": r["instruction"], "answer": r["answer"]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main():
    train = make_split(TRAIN_SEED, N_TRAIN, set())
    train_instr = {r["instruction"] for r in train}
    test = make_split(TEST_SEED, N_TEST, train_instr)
    overlap = train_instr & {r["instruction"] for r in test}
    assert not overlap, "test repeats %d train instructions" % len(overlap)
    assert len(train_instr) == N_TRAIN
    assert len({r["instruction"] for r in test}) == N_TEST
    write(os.path.join(OUT_DIR, "train.jsonl"), train, 1)
    write(os.path.join(OUT_DIR, "test.jsonl"), test, N_TRAIN + 1)
    for name, rows in (("train", train), ("test", test)):
        counts = {c: sum(r["category"] == c for r in rows) for c in CATEGORIES}
        print(name, len(rows), counts)


if __name__ == "__main__":
    main()
