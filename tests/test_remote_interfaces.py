"""`--server` on the CLI and ICM_SERVER_URL in the backend, against the small fake OpenAI-compatible
server (real HTTP; the tokenizer is smollm2-135m's, loaded locally). The real vLLM path is in
test_remote_vllm.py (parity, ICM) and test_remote_vllm_backend.py (whole-project job, vLLM killed mid-job).
"""

from __future__ import annotations

import json
import time

import pytest

from fake_openai_server import FakeOpenAI
from icm_backend.cli import main
from icm_backend.errors import InputError
from icm_backend.finetune.job import refuse_remote_training
from icm_backend.labelstudio.config import parse_label_config
from icm_backend.server.app import create_app, get_backend
from icm_backend.server.config import ServerConfig
from icm_backend.server.model_host import ModelHost, ModelUnavailable
from label_studio_harness import free_port
from test_server_protocol import CLASSIFY_XML

TOKENIZER = "smollm2-135m"


@pytest.fixture
def fake():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"text": f"the film was {'fine' if i % 2 else 'dull'} {i}"}) + "\n"
                            for i in range(10)))
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_label_on_a_model_server(fake, rows_file, tmp_path, capsys):
    out = tmp_path / "out.jsonl"
    code, stdout, err = run_cli(capsys, "label", str(rows_file), "--task", "classify", "--labels", "bad,good",
                                "--method", "zero-shot", "--server", fake.base_url, "--model", "fake-lm",
                                "--tokenizer", TOKENIZER, "--out", str(out))
    assert code == 0, err
    preds = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(preds) == 10 and {p["label"] for p in preds} <= {"bad", "good"}
    assert fake.requests and all(r["model"] == "fake-lm" for r in fake.requests)


@pytest.mark.parametrize("case,message", [
    ("no_logprobs", "returned no log-probs"),
    ("other_model", "serves fake-lm, not 'llama-3-70b'"),
    ("unreachable", "gave up after 1s of retries"),
])
def test_cli_model_server_errors_are_one_line_exit_2(fake, rows_file, tmp_path, capsys, case, message):
    url, model = fake.base_url, "fake-lm"
    if case == "no_logprobs":
        fake.no_logprobs = True
    elif case == "other_model":
        model = "llama-3-70b"
    else:
        url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = run_cli(capsys, "label", str(rows_file), "--task", "classify", "--labels", "bad,good",
                           "--method", "zero-shot", "--server", url, "--model", model, "--tokenizer", TOKENIZER,
                           "--server-retry-s", "1", "--out", str(tmp_path / "o.jsonl"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: model server") and message in err, err


def test_server_config_reads_the_model_server_env(tmp_path):
    env = {"MODEL_DIR": str(tmp_path), "ICM_SERVER_URL": "http://vllm:8000/v1", "ICM_MODEL": "qwen-7b",
           "OPENAI_API_KEY": "sk-one", "ICM_SERVER_API_KEY": "sk-two", "ICM_SERVER_RETRY_S": "42"}
    cfg = ServerConfig.from_env(env)
    assert (cfg.server_url, cfg.model_name, cfg.server_api_key, cfg.server_retry_s) == \
        ("http://vllm:8000/v1", "qwen-7b", "sk-two", 42.0)
    assert "sk-two" not in repr(cfg)
    with pytest.raises(InputError, match="ICM_MODEL must name"):
        ServerConfig.from_env({"ICM_SERVER_URL": "http://vllm:8000/v1"})
    with pytest.raises(InputError, match="ICM_SERVER_URL="):
        ServerConfig.from_env({"ICM_SERVER_URL": "vllm:8000", "ICM_MODEL": "m"})


def _config(tmp_path, url, **kw) -> ServerConfig:
    return ServerConfig.from_env({"MODEL_DIR": str(tmp_path / "model"), "ICM_SERVER_URL": url,
                                  "ICM_MODEL": "fake-lm", "ICM_TOKENIZER": TOKENIZER, **kw})


def test_backend_labels_on_the_model_server(fake, tmp_path):
    host = ModelHost(_config(tmp_path, fake.base_url))
    tasks = [{"id": 10 + i, "data": {"text": f"a {'fine' if i % 2 else 'dull'} film {i}"}} for i in range(6)]
    preds = host.label(parse_label_config(CLASSIFY_XML), tasks, method="icm")
    assert sorted(preds) == [t["id"] for t in tasks] and all(p.result for p in preds.values())
    assert type(host.model()).__name__ == "RemoteScorer" and fake.requests


def test_health_and_setup_do_not_call_the_model_server(tmp_path):
    app = create_app(_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1"), start_worker=False)
    client = app.test_client()
    t0 = time.perf_counter()
    health = client.get("/health").json
    setup = client.post("/setup", json={}).json
    assert time.perf_counter() - t0 < 1.0
    assert health["status"] == "UP" and health["model_version"] == "icm-fake-lm"
    assert setup["model_version"] == "icm-fake-lm"
    get_backend(app).runner.stop()


def test_model_server_down_fails_the_batch_with_the_reason_not_per_task(tmp_path):
    host = ModelHost(_config(tmp_path, f"http://127.0.0.1:{free_port()}/v1", ICM_SERVER_RETRY_S="1"))
    tasks = [{"id": i, "data": {"text": f"film {i}"}} for i in range(4)]
    with pytest.raises(ModelUnavailable, match="model server .* gave up after 1s"):
        host.label(parse_label_config(CLASSIFY_XML), tasks, method="zero-shot")


def test_model_server_going_down_mid_batch_is_not_blamed_on_a_task(fake, tmp_path):
    host = ModelHost(_config(tmp_path, fake.base_url, ICM_SERVER_RETRY_S="1"))
    host.model()  # up when loaded ...
    fake.stop()  # ... down when labelling
    tasks = [{"id": i, "data": {"text": f"film {i}"}} for i in range(4)]
    with pytest.raises(ModelUnavailable, match="gave up after 1s"):
        host.label(parse_label_config(CLASSIFY_XML), tasks, method="zero-shot")


def test_fine_tuning_with_a_remote_model_is_refused_with_the_way_out(tmp_path):
    cfg = _config(tmp_path, "http://vllm:8000/v1")
    with pytest.raises(InputError, match=r"fine-tuning needs local weights.*--enable-lora.*ICM_MODEL=<version>"):
        refuse_remote_training(cfg)
    refuse_remote_training(ServerConfig(model_dir=tmp_path))  # local model: no objection


def test_waiting_for_the_model_server_is_progress_and_can_be_stopped(fake, tmp_path):
    """A job sees "waiting for the model server" as progress; a /predict budget or a cancel stops the wait."""
    host = ModelHost(_config(tmp_path, fake.base_url, ICM_SERVER_RETRY_S="300"))
    fake.fail_next = 10_000  # 503 for ever
    seen = []

    class Stop(Exception):
        pass

    def progress(done, total, msg=""):
        seen.append(msg)
        if len(seen) >= 2:
            raise Stop()

    tasks = [{"id": i, "data": {"text": f"film {i}"}} for i in range(4)]
    t0 = time.perf_counter()
    with pytest.raises(Stop):
        host.label(parse_label_config(CLASSIFY_XML), tasks, method="zero-shot", progress=progress)
    assert time.perf_counter() - t0 < 20
    assert all("waiting for the model server (HTTP 503" in m for m in seen)


def test_served_name_that_is_not_a_local_model_asks_for_the_tokenizer(fake, rows_file, tmp_path, capsys):
    fake.model = "gemma"  # served under a short name; the server says nothing about its tokenizer
    code, _, err = run_cli(capsys, "label", str(rows_file), "--task", "classify", "--labels", "bad,good",
                           "--method", "zero-shot", "--server", fake.base_url, "--model", "gemma",
                           "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and err.count("\n") == 1, err
    assert "--model gemma: the served name is not a model this machine has" in err
    assert "--tokenizer NAME_OR_DIR" in err and "the server does not send its tokenizer" in err


def test_tokenizer_taken_from_the_path_the_server_reports(fake, rows_file, tmp_path, capsys):
    """vLLM's /v1/models gives the path it loaded ("root"); where this machine can load it, no --tokenizer."""
    fake.model, fake.root = "gemma", TOKENIZER
    out = tmp_path / "o.jsonl"
    code, _, err = run_cli(capsys, "label", str(rows_file), "--task", "classify", "--labels", "bad,good",
                           "--method", "zero-shot", "--server", fake.base_url, "--model", "gemma", "--out", str(out))
    assert code == 0, err
    assert len(out.read_text().splitlines()) == 10


def test_wrong_explicit_tokenizer_names_the_option(fake, rows_file, tmp_path, capsys):
    code, _, err = run_cli(capsys, "label", str(rows_file), "--task", "classify", "--labels", "bad,good",
                           "--method", "zero-shot", "--server", fake.base_url, "--model", "fake-lm",
                           "--tokenizer", "no-such-tokenizer", "--out", str(tmp_path / "o.jsonl"))
    assert code == 2 and err.startswith("error: --tokenizer no-such-tokenizer: unknown model"), err
