"""Agreement of each run's labels with the in-process run, accuracy against the topic column, wall times."""
import json
from pathlib import Path

R = Path(__file__).resolve().parent
gold = [json.loads(line)["topic"] for line in (R.parents[2] / "tests/data/topics4.jsonl").read_text().splitlines()]


def labels(name):
    return [json.loads(line)["label"] for line in (R / f"{name}.jsonl").read_text().splitlines()]


base = labels("inprocess")
t_base = float((R / "inprocess.seconds").read_text())
print(f"in process (fp32): {t_base:.1f} s wall, accuracy {sum(a == g for a, g in zip(base, gold)) / len(gold):.3f}")
for name in ("server", "server_no_tokenizer_flag", "processed_auto"):
    if not (R / f"{name}.jsonl").exists():
        print(f"{name}: no output")
        continue
    got = labels(name)
    t = float((R / f"{name}.seconds").read_text())
    log = (R / f"{name}.log").read_text()
    mode = [line.split("scored by ")[1] for line in log.splitlines() if "scored by " in line]
    print(f"{name}: {len(got)} rows, same label as in process on {sum(a == b for a, b in zip(got, base))}/{len(base)} "
          f"({sum(a == b for a, b in zip(got, base)) / len(base):.3f}), {t:.1f} s wall ({t / t_base:.2f}x in process), "
          f"accuracy {sum(a == g for a, g in zip(got, gold)) / len(gold):.3f}; mode: {mode[-1] if mode else '?'}")
for name in ("forced_topk", "forced_allowed"):
    p = R / f"{name}.json"
    print(f"{name}: {p.read_text() if p.exists() else 'no output'}".replace("\n", " "))
