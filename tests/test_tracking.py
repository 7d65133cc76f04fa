"""MLflow tracking, against MLflow's own client and a real store: a SQLite database (MLflow's
recommended local store; its file store is in maintenance mode) with its artifacts beside it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest
import ray.train
import yaml

from recsys_dist import run_layout, schema, tracking
from recsys_dist.data.vocab import Vocabulary
from recsys_dist.registry import Registry
from recsys_dist.train.tracking_callback import TrackMetrics


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A store of this test's own; the client reads it back. MLflow keeps a SQLite store's
    artifacts in ./mlruns, so the test runs in its own directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    import mlflow

    return mlflow.MlflowClient()


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run, for tests whose tracking writes into the run directory."""
    return shutil.copytree(tiny_run.run, tmp_path / "run")


def test_nothing_is_tracked_without_a_tracking_uri(run_copy, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    callback = TrackMetrics(str(run_copy))
    callback.after_report(None, run_layout.read_metrics(run_copy)[:1], None)
    assert tracking.log_training(str(run_copy)) is None
    registry = Registry(tmp_path / "registry")
    registry.promote(registry.register(run_copy).id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry", "run"]  # no mlruns/
    assert not (run_copy / run_layout.TRACKING_FILE).exists()


def test_a_run_is_logged_with_its_settings_and_every_validation(tiny_run, mlflow_store):
    """Without live logging (no callback, or one that could not reach the store), the driver
    logs every validation of metrics.jsonl when training ends."""
    run = mlflow_store.get_run(tracking.log_training(str(tiny_run.run)))
    assert run.data.tags[tracking.KIND_TAG] == "train"
    assert run.data.params["model.hidden_size"] == str(tiny_run.config.model.hidden_size)
    lines = run_layout.metrics_file(tiny_run.run)
    epochs = [json.loads(line) for line in open(lines).read().splitlines()]
    history = mlflow_store.get_metric_history(run.info.run_id, "valid_ndcg_at_10")
    assert [(m.step, m.value) for m in history] == [
        (e["epoch"], e["valid_ndcg@10"]) for e in epochs
    ]


def test_the_driver_hands_its_store_to_ray_trains_controller_but_never_a_password(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for given, handed in [
        ("sqlite:///mlflow.db", f"sqlite:///{tmp_path}/mlflow.db"),  # not the controller's cwd
        ("sqlite:////srv/mlflow.db", "sqlite:////srv/mlflow.db"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("https://me:planted-secret@mlflow.example", None),
    ]:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", given)
        assert tracking.portable_uri() == handed
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking.portable_uri() is None


def test_the_callback_logs_each_report_as_it_arrives_into_the_one_training_run(
    tiny_run, run_copy, tmp_path, mlflow_store, monkeypatch, caplog
):
    """Ray Train's controller calls after_report once per epoch (every rank's metrics); the
    first starts the MLflow run, each logs at step = epoch; log_training then finishes that
    same run with the settings, and a resumed training goes on in it."""
    first, second = run_layout.read_metrics(run_copy)  # the loop's report keys
    callback = TrackMetrics(str(run_copy))  # in the driver: the experiment is made here
    ray.train.RunConfig(callbacks=[callback])  # what Ray Train accepts as a callback
    experiment = mlflow_store.get_experiment_by_name("tests")
    assert experiment.artifact_location.startswith(str(tmp_path / "mlruns"))
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # a controller's Ray was
        monkeypatch.delenv(name)  # started before they were set: the callback brings them

    def history(run_id: str) -> list[tuple[int, float]]:
        found = mlflow_store.get_metric_history(run_id, "valid_ndcg_at_10")
        return sorted((m.step, m.value) for m in found)

    callback.after_report(None, [first, first], None)  # two workers, one report
    run_id = callback.mlflow_run_id
    assert history(run_id) == [(first["epoch"], first["valid_ndcg@10"])]  # live, not at the end
    assert mlflow_store.get_run(run_id).info.status == "RUNNING"
    callback.after_report(None, [second, second], None)
    assert [step for step, _ in history(run_id)] == [first["epoch"], second["epoch"]]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", callback.tracking_uri)  # the driver's, again
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    assert tracking.log_training(str(run_copy)) == run_id  # the same run, finished
    run = mlflow_store.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tracking.KIND_TAG] == "train"
    assert run.data.params["model.hidden_size"] == str(tiny_run.config.model.hidden_size)
    assert run.data.tags[tracking.MODEL_DIR_TAG] == run_layout.model_dir(str(run_copy))
    assert len(history(run_id)) == 2  # log_training added no second copy of an epoch
    assert len(mlflow_store.search_runs([experiment.experiment_id])) == 1

    resumed = TrackMetrics(str(run_copy))  # a rerun into the same run directory, longer
    third = {**second, "epoch": second["epoch"] + 1}
    resumed.after_report(None, [third], None)
    assert resumed.mlflow_run_id == run_id
    steps = [first["epoch"], second["epoch"], third["epoch"]]
    assert [step for step, _ in history(run_id)] == steps
    settings = yaml.safe_load((run_copy / "config.yaml").read_text())
    settings["train"]["epochs"] = third["epoch"]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(settings))
    assert tracking.log_training(str(run_copy)) == run_id  # finished again, the same run
    assert mlflow_store.get_run(run_id).info.status == "FINISHED"
    assert "keeps its first train.epochs" in caplog.text


def test_a_version_is_logged_with_its_lineage(tiny_run, tmp_path, mlflow_store):
    registry = Registry(tmp_path / "registry")
    parent = registry.register(tiny_run.run)
    child = registry.register(tiny_run.run, parent=parent.id, metrics={"gate": {"x": 0.5}})
    experiment = mlflow_store.get_experiment_by_name("tests")
    runs = mlflow_store.search_runs(
        [experiment.experiment_id], f"tags.`recsys_dist.version` = '{child.id}'"
    )
    (logged,) = runs
    assert logged.data.tags["recsys_dist.parent"] == parent.id
    assert logged.data.tags["recsys_dist.data_hash"] == child.record["data"]["data_hash"]
    assert logged.data.params["events"] == str(child.record["data"]["events"])
    assert logged.data.metrics["gate.x"] == 0.5


def test_versions_are_in_the_model_registry_and_current_follows_promotion(
    tiny_run, tmp_path, mlflow_store
):
    """Each registered version is a version of MLflow's registered model, a pyfunc model of
    its own (not a pointer into our registry) with the lineage as tags; promotion and rollback
    move the `current` alias."""
    registry = Registry(tmp_path / "registry")
    first = registry.register(tiny_run.run)
    second = registry.register(tiny_run.run, parent=first.id)
    found = {
        v.tags["recsys_dist.version"]: v
        for v in mlflow_store.search_model_versions(f"name='{tracking.DEFAULT_MODEL}'")
    }
    assert set(found) == {first.id, second.id}
    assert found[second.id].source.startswith("models:/")  # MLflow's copy of the export
    assert found[second.id].tags[tracking.REGISTRY_PATH_TAG] == second.path
    assert found[second.id].tags["recsys_dist.parent"] == first.id
    assert found[second.id].tags["recsys_dist.data_hash"] == second.record["data"]["data_hash"]
    version_run = mlflow_store.get_run(found[second.id].run_id)
    assert version_run.data.tags["recsys_dist.version"] == second.id

    def current() -> str:
        model = mlflow_store.get_model_version_by_alias(tracking.DEFAULT_MODEL, "current")
        return model.tags["recsys_dist.version"]

    registry.promote(first.id)
    assert current() == first.id
    registry.promote(second.id)
    assert current() == second.id
    registry.rollback()
    assert current() == first.id


# Run in a fresh interpreter: MLflow's client, the store and nothing of the test's objects.
SCORE_CURRENT = textwrap.dedent(
    """
    import json, sys
    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/recsys_dist@current")
    histories = pd.DataFrame(json.loads(sys.argv[1]))
    answer = {
        "with_k": model.predict(histories).to_dict("list"),
        "default_k": model.predict(histories.drop(columns=["k"])).to_dict("list"),
        "inputs": model.metadata.get_input_schema().input_names(),
        "outputs": model.metadata.get_output_schema().input_names(),
        "example": None if model.input_example is None else list(model.input_example),
        "version": model.metadata.metadata,
    }
    print(json.dumps(answer, default=str))
    """
)


def test_current_loads_from_mlflow_alone_and_scores_histories(tiny_run, tmp_path, mlflow_store):
    """`mlflow.pyfunc.load_model("models:/recsys_dist@current")` in a new process, after our
    registry is gone: k items per row (the row's own k, else the predictor's), none seen."""
    registry = Registry(tmp_path / "registry")
    older = registry.register(tiny_run.run)
    version = registry.register(tiny_run.run, parent=older.id)
    registry.promote(version.id)
    items = Vocabulary.load(f"{version.model_dir}/{schema.VOCAB_FILE}").to_item_ids(
        list(range(schema.NUM_SPECIAL_TOKENS, schema.NUM_SPECIAL_TOKENS + 5))
    )
    items = items.to_pylist()
    histories = {
        schema.USER_ID: ["a", "b", "c"],
        schema.ITEM_IDS: [items[:3], items[3:4], [items[4], "never-seen-item"]],
        schema.TIMESTAMPS: [[100, 200, 300], [100], [100, 200]],
        "k": [4, 2, 3],
    }
    shutil.rmtree(registry.root)  # MLflow holds its own copy of the export

    done = subprocess.run(
        [sys.executable, "-c", SCORE_CURRENT, json.dumps(histories)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    scored = answer["with_k"]
    assert scored["user_id"] == ["a", "b", "c"]
    assert [len(row) for row in scored["recommended"]] == [4, 2, 3]
    for history, row, scores in zip(
        histories[schema.ITEM_IDS], scored["recommended"], scored["scores"], strict=True
    ):
        assert not set(row) & set(history)  # none seen
        assert scores == sorted(scores, reverse=True) and len(scores) == len(row)
    assert scored["unknown_items"] == [0, 0, 1]
    assert [len(row) for row in answer["default_k"]["recommended"]] == [10, 10, 10]
    assert answer["inputs"] == ["user_id", "item_ids", "timestamps", "k"]
    outputs = ["user_id", "recommended", "scores", "unknown_items"]
    outputs += ["predicted_ratings"] if version.record["model"].get("rating_head") else []
    assert answer["outputs"] == list(scored) == outputs  # the batch predictor's columns
    assert answer["example"] == ["user_id", "item_ids", "timestamps", "k"]


def test_a_turn_is_logged_and_a_broken_store_fails_nothing(
    tiny_run, tmp_path, mlflow_store, monkeypatch, caplog
):
    turn = {
        "candidate": "v2",
        "parent": "v1",
        "promoted": False,
        "reason": "candidate worse",
        "candidate_metrics": {"ndcg@10": 0.1},
        "current_metrics": {"ndcg@10": 0.2},
        "new_files": 1,
        "new_items": 3,
        "events": 40,
    }
    run = mlflow_store.get_run(tracking.log_turn(turn))
    assert run.data.tags["recsys_dist.promoted"] == "false"
    assert run.data.metrics["candidate.ndcg_at_10"] == 0.1 and run.data.metrics["new_items"] == 3
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")
    assert tracking.log_turn(turn) is None
    registry = Registry(tmp_path / "registry")  # every registry operation still works
    first, second = registry.register(tiny_run.run), registry.register(tiny_run.run)
    registry.promote(first.id)
    registry.promote(second.id)
    assert registry.rollback()["current"] == first.id == registry.current().id
    run = shutil.copytree(tiny_run.run, tmp_path / "run")  # and so does training
    TrackMetrics(str(run)).after_report(None, run_layout.read_metrics(run), None)
    for step in ("log_version", "log_current", "start_training", "log_turn"):
        assert f"MLflow tracking ({step}) failed" in caplog.text
