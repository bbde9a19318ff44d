"""Compare ICM labels against crowdsourced labels (issue 5).

Library first, CLI second: everything here works without `icm-backend`.

Examples (shell):

    # ICM output vs crowd rows (task, worker, label) in JSONL or CSV, optional gold column file
    icm-backend compare --labels icm.jsonl --crowd crowd.csv --gold gold.jsonl \
        --report report.html --json summary.json

    # the paper's Alpaca comparisons: 4 crowd votes per pair (candidate_label), gold = `label`
    icm-backend compare --labels icm_alpaca.jsonl \
        --crowd data/paper/test_alpaca.json --crowd-format alpaca \
        --report alpaca.html --json alpaca.json

    # write the alpaca votes as plain crowd rows (task, worker, label) for other tools
    icm-backend compare --crowd test_alpaca.json --crowd-format alpaca --write-crowd crowd.jsonl

    # live Label Studio project: crowd = annotations, ICM = predictions; flags disagreements
    icm-backend compare --ls-url http://localhost:8080 --ls-api-key $KEY --ls-project 3 \
        --report report.html --json summary.json

Python:

    from icm_backend.compare import load_inputs, compare, write_html_report
    inputs = load_inputs("icm.jsonl", "test_alpaca.json", crowd_format="alpaca")
    result = compare(inputs)
    result.summary["cohen_kappa_icm_vs_majority"]
"""

from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.compare.loaders import load_alpaca, load_crowd, load_gold, load_icm_labels, load_inputs
from icm_backend.compare.pipeline import CompareResult, compare
from icm_backend.compare.report_html import write_html_report

__all__ = [
    "CompareInput", "CrowdLabel", "CompareResult", "compare", "load_alpaca", "load_crowd",
    "load_gold", "load_icm_labels", "load_inputs", "write_html_report",
]
