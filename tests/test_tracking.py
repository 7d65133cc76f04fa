"""MLflow tracking, against MLflow's own client and a real (folder) store."""

from __future__ import annotations

import json

import pytest

from recsys_dist import run_layout, tracking
from recsys_dist.registry import Registry


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A folder store (MLflow keeps one for those who opt in); the client reads it back."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "tests")
    import mlflow

    return mlflow.MlflowClient()


def test_nothing_is_tracked_without_a_tracking_uri(tiny_run, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.log_training(str(tiny_run.run)) is None
    Registry(tmp_path / "registry").register(tiny_run.run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry"]  # no mlruns/


def test_a_run_is_logged_with_its_settings_and_every_validation(tiny_run, mlflow_store):
    run = mlflow_store.get_run(tracking.log_training(str(tiny_run.run)))
    assert run.data.tags[tracking.KIND_TAG] == "train"
    assert run.data.params["model.hidden_size"] == str(tiny_run.config.model.hidden_size)
    lines = run_layout.metrics_file(tiny_run.run)
    epochs = [json.loads(line) for line in open(lines).read().splitlines()]
    history = mlflow_store.get_metric_history(run.info.run_id, "valid_ndcg_at_10")
    assert [(m.step, m.value) for m in history] == [
        (e["epoch"], e["valid_ndcg@10"]) for e in epochs
    ]


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
    """Each registered version is a version of MLflow's registered model, sourced from our
    registry's directory; promotion and rollback move the `current` alias."""
    registry = Registry(tmp_path / "registry")
    first = registry.register(tiny_run.run)
    second = registry.register(tiny_run.run, parent=first.id)
    found = {
        v.tags["recsys_dist.version"]: v
        for v in mlflow_store.search_model_versions(f"name='{tracking.DEFAULT_MODEL}'")
    }
    assert set(found) == {first.id, second.id}
    assert found[second.id].source == second.path
    assert found[second.id].tags["recsys_dist.parent"] == first.id

    def current() -> str:
        model = mlflow_store.get_model_version_by_alias(tracking.DEFAULT_MODEL, "current")
        return model.tags["recsys_dist.version"]

    registry.promote(first.id)
    assert current() == first.id
    registry.promote(second.id)
    assert current() == second.id
    registry.rollback()
    assert current() == first.id


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
    assert Registry(tmp_path / "registry").register(tiny_run.run).id  # registration still works
    assert "MLflow tracking (log_version) failed" in caplog.text
