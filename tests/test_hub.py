"""Model cards and `push_to_hub`, against a local HTTP server that stands in for the Hub API.

The stand-in implements what an upload hits: repo creation (`/api/repos/create`), README metadata validation
(`/api/validate-yaml`), the preupload check that says whether each file goes as a regular git blob or through LFS
(`/api/models/REPO/preupload/REV`), the git LFS batch API with basic transfers (`/REPO.git/info/lfs/objects/batch`
and a PUT per object), and the commit (`/api/models/REPO/commit/REV`, ndjson). huggingface_hub is pointed at it by
its `ENDPOINT` constant (what `HF_ENDPOINT` sets when given before the import), offline mode is lifted for the
test, and the token is a fake one. Files the stand-in calls LFS go through the legacy LFS protocol (hf_xet's Xet
protocol, which huggingface_hub prefers when hf_xet is installed, needs Hugging Face's Xet storage service, which
cannot be stood in for offline: those tests switch Xet off, as for a user without hf_xet).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard
from transformers import TrainerCallback

from hf_seqobj.model_card import final_metrics, objective_papers, objective_settings, trainer_model_card
from hf_seqobj.objectives.erpo.common import TAN2018
from hf_seqobj.objectives.scheduled_sampling import BENGIO2015
from hf_seqobj.objectives.sequencematch import CUNDY2024
from hf_seqobj.trainers import SeqObjSeq2SeqTrainingArguments


TOKEN = "hf_fake"


class FakeHub:
    """A minimal Hub API on 127.0.0.1: repos as `{repo_id: {path: bytes}}`, LFS objects by sha256."""

    def __init__(self, lfs_suffixes: tuple[str, ...] = ()):
        self.lfs_suffixes = lfs_suffixes
        self.repos: dict[str, dict[str, bytes]] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[dict] = []
        self.requests: list[tuple[str, str, str | None]] = []
        self.unexpected: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    data = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return data
                        data += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _reply(self, status: int, payload: dict | None = None) -> None:
                body = json.dumps(payload or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                hub.requests.append(("POST", self.path, self.headers.get("Authorization")))
                body, path = self._body(), self.path.split("?")[0]
                if path == "/api/repos/create":
                    request = json.loads(body)
                    repo_id = f"{request.get('organization') or 'fake-user'}/{request['name']}"
                    hub.repos.setdefault(repo_id, {})
                    return self._reply(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
                if path == "/api/validate-yaml":
                    yaml.safe_load(json.loads(body)["content"].split("---")[1])  # the metadata block parses
                    return self._reply(200, {"errors": [], "warnings": []})
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    modes = [
                        {
                            "path": f["path"],
                            "uploadMode": "lfs" if f["path"].endswith(hub.lfs_suffixes) else "regular",
                            "shouldIgnore": False,
                            "oid": None,
                        }
                        for f in files
                    ]
                    return self._reply(200, {"files": modes})
                if parts[:2] == ["api", "models"] and parts[4] == "commit":
                    return self._commit(f"{parts[2]}/{parts[3]}", body)
                if path.endswith(".git/info/lfs/objects/batch"):
                    objects = json.loads(body)["objects"]
                    actions = [
                        {**o, "authenticated": True, "actions": {"upload": {"href": f"{hub.url}/lfs/{o['oid']}"}}}
                        for o in objects
                    ]
                    return self._reply(200, {"transfer": "basic", "objects": actions})
                hub.unexpected.append(f"POST {self.path}")
                return self._reply(404, {"error": f"no route POST {self.path}"})

            def do_PUT(self):
                hub.requests.append(("PUT", self.path, self.headers.get("Authorization")))
                data = self._body()
                if self.path.startswith("/lfs/"):
                    oid = self.path.rsplit("/", 1)[-1]
                    if hashlib.sha256(data).hexdigest() != oid:
                        return self._reply(400, {"error": "sha256 mismatch"})
                    hub.lfs_objects[oid] = data
                    return self._reply(200)
                hub.unexpected.append(f"PUT {self.path}")
                return self._reply(404, {"error": f"no route PUT {self.path}"})

            def do_GET(self):
                hub.requests.append(("GET", self.path, self.headers.get("Authorization")))
                if self.path == "/api/agent-harnesses":  # huggingface_hub's best-effort agent detection
                    return self._reply(404, {"error": "no registry here"})
                hub.unexpected.append(f"GET {self.path}")
                return self._reply(404, {"error": f"no route GET {self.path}"})

            def _commit(self, repo_id: str, body: bytes):
                if repo_id not in hub.repos:
                    return self._reply(404, {"error": f"repository {repo_id} not found"})
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                commit = {"header": lines[0]["value"], "regular": [], "lfs": []}
                for line in lines[1:]:
                    value = line["value"]
                    if line["key"] == "file":
                        hub.repos[repo_id][value["path"]] = base64.b64decode(value["content"])
                        commit["regular"].append(value["path"])
                    elif line["key"] == "lfsFile":
                        if value["oid"] not in hub.lfs_objects:
                            return self._reply(400, {"error": f"LFS object {value['oid']} was never uploaded"})
                        hub.repos[repo_id][value["path"]] = hub.lfs_objects[value["oid"]]
                        commit["lfs"].append(value["path"])
                hub.commits.append(commit)
                sha = hashlib.sha1(body).hexdigest()
                return self._reply(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_hub(monkeypatch, request):
    """A running FakeHub that huggingface_hub and transformers talk to (offline mode lifted for the test)."""
    import huggingface_hub.constants
    import transformers.utils.hub

    lfs_suffixes = getattr(request, "param", ())
    with FakeHub(lfs_suffixes) as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # the Trainer's HfApi, made anew on this endpoint
        if lfs_suffixes:
            import huggingface_hub._commit_api
            import huggingface_hub.hf_api

            monkeypatch.setattr(huggingface_hub.hf_api, "is_xet_available", lambda: False)
            monkeypatch.setattr(huggingface_hub._commit_api, "is_xet_available", lambda: False)
        yield hub


class _WaitForPushes(TrainerCallback):
    """Lets each checkpoint's (background) push finish before training goes on, so that the next checkpoint's files
    are not copied into the output directory while the previous push reads them."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        self.trainer._finish_current_push()


def _card(path: Path) -> ModelCard:
    return ModelCard.load(path)


def test_card_names_the_objective_its_settings_metrics_papers_and_versions(make_trainer):
    trainer = make_trainer("bart", "card", objective="dagger", dagger_beta=0.25, max_steps=2, eval_strategy="no")
    trainer.train()
    trainer.state.log_history.append({"eval_f1": 0.123456, "eval_runtime": 1.0, "step": 2})
    card = trainer_model_card(trainer, metrics={"test_f1": 0.5})
    data = card.data.to_dict()
    assert data["tags"] == ["hf_seqobj", "dagger", "ner"]
    assert data["library_name"] == "transformers" and data["model_name"] == "card"
    assert "base_model" not in data  # a local checkpoint is no Hub model id
    assert "datasets" not in data  # nor is the synthetic data
    text = card.text
    assert "`ner` task" in text and "synthetic NER data" in text and "SeqObjSeq2SeqTrainer" in text
    assert "| `dagger_beta` | `0.25` |" in text and "| `oracle` | `span_f1` |" in text and "`rollin`" in text
    assert "ss_schedule" not in text and "`objective`" not in text  # only dagger's settings
    assert "| eval_f1 | 0.1235 |" in text and "| test_f1 | 0.5 |" in text and "runtime" not in text
    assert "| train_loss |" in text
    assert "2406.09393" in text and "Improving Autoregressive Training with Dynamic Oracles" in text
    for library in ("hf_seqobj", "transformers", "torch", "accelerate", "peft", "datasets", "huggingface_hub"):
        assert f"- {library}: " in text
    # A Hub base model and data set go into the metadata.
    trainer.args.hub_model_id = "someone/tagger"
    card = trainer_model_card(trainer, dataset_name="eriktks/conll2003", finetuned_from="facebook/bart-base")
    assert card.data.base_model == "facebook/bart-base" and card.data.datasets == ["eriktks/conll2003"]
    assert card.data.model_name == "tagger" and 'from_pretrained("someone/tagger")' in card.text


def test_settings_and_papers_per_objective(tmp_path):
    def args(objective, **kwargs):
        return SeqObjSeq2SeqTrainingArguments(output_dir=str(tmp_path), objective=objective, **kwargs)

    assert objective_settings(args("mle")) == {}
    settings = objective_settings(args("scheduled_sampling", ss_k=5.0))
    assert settings["ss_k"] == 5.0 and "rollin" in settings and "dagger_beta" not in settings
    assert objective_papers("mle") == []
    assert objective_papers("scheduled_sampling") == [BENGIO2015]
    assert objective_papers("sequencematch") == [CUNDY2024]
    assert "2306.05426" in CUNDY2024 and "Cundy" in CUNDY2024
    assert objective_papers("raml") == [TAN2018]
    assert "Connecting the Dots Between MLE and RL" in TAN2018
    assert final_metrics([{"eval_f1": 0.1}, {"eval_f1": 0.2, "eval_runtime": 3.0}, {"train_loss": 1.0}]) == {
        "eval_f1": 0.2,
        "train_loss": 1.0,
    }


def test_every_checkpoint_and_the_output_dir_get_a_card(make_trainer, tmp_path):
    trainer = make_trainer("gpt2", "ckpt", objective="scheduled_sampling", max_steps=2, save_strategy="steps")
    trainer.args.save_steps = 1
    trainer.train()
    for step in (1, 2):
        card = _card(tmp_path / "ckpt" / f"checkpoint-{step}" / "README.md")
        assert card.data.tags == ["hf_seqobj", "scheduled_sampling", "ner"] and "`ss_schedule`" in card.text
        assert f"{step} optimizer steps" in card.text
    trainer.save_model()
    assert "scheduled_sampling" in _card(tmp_path / "ckpt" / "README.md").data.tags


def test_push_to_hub_uploads_model_tokenizer_and_card(make_trainer, fake_hub, tmp_path):
    """Every file regular (as the Hub answers for small files): one commit with model, tokenizer and card."""
    trainer = make_trainer(
        "t5", "pushed", objective="dagger", max_steps=2, push_to_hub=True, hub_model_id="me/t5-dagger", hub_token=TOKEN
    )
    assert fake_hub.repos == {"me/t5-dagger": {}}  # the Trainer creates the repository at start
    assert (trainer.task_name, trainer.dataset_name) == ("ner", "synthetic")  # set by build_trainer
    trainer.train()
    trainer.push_to_hub(metrics={"test_f1": 0.25})
    assert not fake_hub.unexpected, fake_hub.unexpected
    api_calls = [(method, path, auth) for method, path, auth in fake_hub.requests if path.startswith("/api/")]
    assert {path for _, path, auth in api_calls if auth != f"Bearer {TOKEN}"} <= {"/api/agent-harnesses"}
    files = fake_hub.repos["me/t5-dagger"]
    out = tmp_path / "pushed"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert files.get(name) == (out / name).read_bytes(), name
    assert not any(name.startswith("checkpoint-") for name in files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.tags == ["hf_seqobj", "dagger", "ner"] and "| test_f1 | 0.25 |" in card.text
    assert "me/t5-dagger" in card.text
    assert fake_hub.commits[-1]["header"]["summary"] == "End of training" and not fake_hub.commits[-1]["lfs"]


@pytest.mark.parametrize("fake_hub", [(".safetensors",)], indirect=True)
def test_push_uploads_weights_through_lfs_and_checkpoints_as_they_are_saved(make_trainer, fake_hub, tmp_path):
    """Weights through git LFS (batch API, PUT, then an lfsFile entry in the commit); with save_strategy="steps"
    (hub_strategy "every_save") each checkpoint's model and card are pushed while training goes on."""
    trainer = make_trainer(
        "gpt2",
        "lfs",
        objective="mle",
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        push_to_hub=True,
        hub_model_id="me/gpt2-mle",
        hub_token=TOKEN,
        hub_always_push=True,  # push every checkpoint even while the previous push runs (they queue up in order)
    )
    trainer.add_callback(_WaitForPushes(trainer))
    trainer.train()
    trainer.push_to_hub()
    assert not fake_hub.unexpected, fake_hub.unexpected
    out = tmp_path / "lfs"
    files = fake_hub.repos["me/gpt2-mle"]
    weights = (out / "model.safetensors").read_bytes()
    assert files["model.safetensors"] == weights
    assert hashlib.sha256(weights).hexdigest() in fake_hub.lfs_objects
    assert all("model.safetensors" in commit["lfs"] for commit in fake_hub.commits)
    summaries = [commit["header"]["summary"] for commit in fake_hub.commits]
    assert summaries[:2] == ["Training in progress, step 1", "Training in progress, step 2"], summaries
    assert summaries[-1] == "End of training"
    assert "README.md" in fake_hub.commits[0]["regular"]  # the checkpoint pushes carry a card too
    assert ModelCard(files["README.md"].decode()).data.tags == ["hf_seqobj", "mle", "ner"]
    assert files["tokenizer.json"] == (out / "tokenizer.json").read_bytes()


def test_cli_pushes_the_trained_model_with_its_final_metrics(fake_hub, tmp_path):
    from hf_seqobj.cli import main

    config = {
        "task": "ner",
        "dataset_name": "synthetic",
        "synthetic_train_size": 48,
        "synthetic_eval_size": 8,
        "architecture": "bart",
        "output_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "predict_with_generate": True,
        "generation_max_length": 24,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
    }
    path = tmp_path / "push.yaml"
    path.write_text(yaml.safe_dump(config))
    flags = ["--push_to_hub", "true", "--hub_model_id", "me/cli-run", "--hub_token", TOKEN]
    assert main(["train", str(path), *flags]) == 0
    assert not fake_hub.unexpected, fake_hub.unexpected
    files = fake_hub.repos["me/cli-run"]
    for name in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "hf_seqobj_run.yaml"):
        assert name in files, name
    card = ModelCard(files["README.md"].decode())
    test_results = json.loads((tmp_path / "run" / "test_results.json").read_text())
    assert f"| test_f1 | {round(test_results['test_f1'], 4)} |" in card.text and "| eval_f1 |" in card.text
    assert card.data.tags == ["hf_seqobj", "mle", "ner"]
    assert fake_hub.commits[-1]["header"]["summary"] == "End of training"
