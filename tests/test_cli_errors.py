"""Bad input is one ``error:`` line and exit 2, from every sub-command, before Ray starts.

User errors are a type (:class:`recsys_dist.errors.UserInputError`), caught once in
``cli.main``; anything else is a bug and keeps its traceback. No test here starts Ray or
trains: arguments, paths and config values are checked first, and ``init_ray`` fails the
test if a command gets that far.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from recsys_dist import cli, run_layout, schema
from recsys_dist.checkpoint import STATE_FILE
from recsys_dist.config import ConfigError
from recsys_dist.data.events import BadEventError
from recsys_dist.data.importers import DataFormatError
from recsys_dist.data.prepare import AppendError
from recsys_dist.errors import MissingInputError, OutputExistsError, UserInputError


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the command started Ray before checking its arguments")

    monkeypatch.setattr(cli.common, "init_ray", refuse)


@pytest.fixture
def paths(tmp_path) -> dict[str, str]:
    """Inputs that pass the CLI's checks (a run, a prepared dataset, a log), nothing more."""
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    (prepared / schema.MANIFEST_FILE).write_text("{}")
    run = tmp_path / "run"
    model = Path(run_layout.model_dir(str(run)))
    model.mkdir(parents=True)
    (model / STATE_FILE).write_text("{}")
    (run / run_layout.RUN_RECORD).write_text(json.dumps({run_layout.PREPARED: str(prepared)}))
    events = tmp_path / "raw" / schema.EVENTS_DIR
    events.mkdir(parents=True)
    (events / "part-00000.parquet").write_bytes(b"")  # listed, never read
    (tmp_path / "log.csv").write_text("user_id,item_id,timestamp\nu,i,1\n")
    (tmp_path / "bad-keys.json").write_text('{"keys": [{"name": "a"}]}')
    generated = tmp_path / "generated" / schema.EVENTS_DIR
    generated.mkdir(parents=True)
    (generated / "part-00000.parquet").write_bytes(b"")
    return {
        "run": str(run),
        "prepared": str(prepared),
        "raw": str(tmp_path / "raw"),
        "csv": str(tmp_path / "log.csv"),
        "bad_keys": str(tmp_path / "bad-keys.json"),
        "generated": str(tmp_path / "generated"),
        "missing": str(tmp_path / "missing"),
        "out": str(tmp_path / "out"),
    }


# (argv with {placeholders} for `paths`, text the one error line must contain)
CASES = {
    "import-missing-input": ("import --format csv {missing} --output {out}", "{missing}"),
    "import-bad-map": ("import --format csv {csv} --output {out} --map user_id", "--map"),
    "import-bad-format": ("import --format xml {csv} --output {out}", "--format"),
    "generate-users": ("generate --output {out} --num-users 0", "--num-users"),
    "generate-items": ("generate --output {out} --num-items 1", "--num-items"),
    "generate-renamed-users": ("generate --output {out} --users 3", "--num-users"),
    "generate-drift-paths": ("generate --output {out} --drift-paths 2", "--drift-paths"),
    "generate-break-days": ("generate --output {out} --break-days -1", "--break-days"),
    "generate-not-a-number": ("generate --output {out} --num-users many", "--num-users"),
    "generate-existing": ("generate --output {generated}", "--overwrite"),
    "prepare-missing-data": ("prepare --data {missing} --output {out}", "{missing}"),
    "prepare-max-len": ("prepare --data {raw} --output {out} --max-len 0", "data.max_len"),
    "prepare-bad-override": ("prepare --data {raw} --output {out} data.nope=1", "data.nope"),
    "train-not-prepared": ("train --data {raw} --output {out}", "not a prepared dataset"),
    "train-workers": ("train --data {prepared} --output {out} --workers -1", "--workers"),
    "train-no-workers": ("train --data {prepared} --output {out} --workers 0", "--workers"),
    "train-abbreviated": ("train --data {prepared} --output {out} --work 2", "--work"),
    "evaluate-not-a-run": ("evaluate --run {prepared}", "not a run directory"),
    "evaluate-split": ("evaluate --run {run} --split train", "--split"),
    "evaluate-sampled": ("evaluate --run {run} --sampled -1", "--sampled"),
    "recommend-k": (
        "recommend --run {run} --histories {raw} --output {out}/r.parquet --k 0",
        "--k",
    ),
    "recommend-histories": (
        "recommend --run {run} --histories {missing} --output {out}/r.parquet",
        "{missing}",
    ),
    "recommend-rank-by": (
        "recommend --run {run} --histories {raw} --output {out}/r.parquet --rank-by votes",
        "--rank-by",
    ),
    "score-k": ("score --run {run} --output {out}/s.parquet --k 0", "--k"),
    "score-ratings-pairs": (
        "score-ratings --run {run} --pairs {missing} --output {out}/r.parquet",
        "{missing}",
    ),
    "score-ratings-not-a-run": (
        "score-ratings --run {missing} --pairs {raw} --output {out}/r.parquet",
        "{missing}",
    ),
    "score-not-a-run": ("score --run {missing} --output {out}/s.parquet", "{missing}"),
    "serve-model": ("serve --run {run} --model {missing}", "--model"),
    "serve-port": ("serve --run {run} --port 0", "--port"),
    "serve-open-without-keys": ("serve --run {run} --host 0.0.0.0", "without authentication"),
    "keys-unknown-scope": ("keys create --file {out}/k.json --name a --scopes admin", "admin"),
    "keys-revoke-unknown": ("keys revoke --file {out}/k.json nobody", "no live key"),
    "keys-malformed-file": ("keys list --file {bad_keys}", "{bad_keys}: not a keys file"),
    "keys-address": ("keys list --file {out}/k.json --address 127.0.0.1:1", "--address"),
    "interests-no-output": ("interests --run {run}", "--output"),
    "interests-not-a-run": ("interests --run {missing} --evaluate", "{missing}"),
    "report-users": ("report --run {run} --output {out}/r.html --num-users -1", "--num-users"),
    "report-renamed-users": ("report --run {run} --output {out}/r.html --users 3", "--num-users"),
    "report-not-a-run": ("report --run {missing} --output {out}/r.html", "{missing}"),
    "config-key": ("config show train.bogus=1", "train.bogus"),
    "config-override": ("config show train_lr", "section.key=value"),
    "config-missing-file": ("config show --config {missing}", "{missing}"),
    "config-not-yaml-sections": ("config show --config {csv}", "{csv}"),
    "models-register-not-a-run": ("models register --registry {out} --run {missing}", "{missing}"),
    "models-unknown-version": ("models promote --registry {out} v1", "no version 'v1'"),
    "models-nothing-to-roll-back": ("models rollback --registry {out}", "no earlier current"),
    "models-no-registry": ("models list", "--registry"),
    "evaluate-version-without-registry": (
        "evaluate --run {run} --model-version v1",
        "--model-version needs",
    ),
    "evaluate-renamed-version": ("evaluate --registry {out} --version v1", "--model-version"),
    "evaluate-empty-registry": ("evaluate --registry {out}", "no current version"),
    "evaluate-run-and-registry": ("evaluate --run {run} --registry {out}", "--registry"),
    "retrain-empty-registry": ("retrain --registry {out} --events {raw}", "no current version"),
    "retrain-missing-events": ("retrain --registry {out} --events {missing}", "{missing}"),
    "retrain-no-workers": ("retrain --registry {out} --events {raw} --workers 0", "--workers"),
    "retrain-bad-config": ("retrain --registry {out} --events {raw} --config {csv}", "{csv}"),
    "retrain-drift-share": (
        "retrain --registry {out} --events {raw} --when-drift 2",
        "retrain.when_drift must be in [0, 1]",
    ),
    "serve-version": ("serve --registry {out} --model-version v1", "--model-version"),
    "serve-model-with-registry": ("serve --registry {out} --model {missing}", "--model"),
    "export-quantize": ("export --run {run} --quantize int4 --output {out}", "--quantize"),
    "export-address": (
        "--address 127.0.0.1:1 export --run {run} --quantize int8 --output {out}",
        "--address",
    ),
    "export-not-a-run": ("export --run {missing} --quantize int8 --output {out}", "{missing}"),
    "no-command": ("", "COMMAND"),
    "no-action": ("keys --json", "ACTION"),
}


@pytest.mark.parametrize("argv, names", CASES.values(), ids=CASES.keys())
def test_bad_input_is_one_line_and_exit_2(argv, names, paths, no_ray, capsys):
    code = cli.main(argv.format(**paths).split())
    captured = capsys.readouterr()
    assert code == cli.EXIT_BAD_INPUT, captured.err
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert names.format(**paths) in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_every_sub_command_has_a_bad_input_case():
    parser = cli.build_parser()
    (action,) = (a for a in parser._actions if a.dest == "command")
    named = [
        next((w for w in argv.split() if w in action.choices), None) for argv, _ in CASES.values()
    ]
    assert set(named) - {None} == set(action.choices)


@pytest.mark.parametrize("legacy", [ConfigError, BadEventError, DataFormatError, AppendError])
def test_legacy_bad_input_errors_are_user_input_errors(legacy):
    assert issubclass(legacy, UserInputError) and issubclass(legacy, ValueError)


def test_path_errors_keep_their_builtin_types():
    """Callers that caught FileNotFoundError / FileExistsError still do."""
    assert issubclass(MissingInputError, FileNotFoundError)
    assert issubclass(OutputExistsError, FileExistsError)
    assert cli.user_error(OutputExistsError("out/events is not empty")) == (
        "out/events is not empty"
    )


class _RayTaskError(Exception):
    """What Ray raises in the driver for an error in a task: the original in ``cause``."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"Traceback (most recent call last):\n...\n{cause!r}")
        self.cause = cause


def test_user_error_unwraps_ray_task_errors_and_leaves_bugs_alone():
    bad_row = BadEventError("log.parquet row 2: field 'timestamp': inf")
    assert cli.user_error(_RayTaskError(bad_row)) == str(bad_row)
    try:
        try:
            raise bad_row
        except BadEventError as error:
            raise RuntimeError("while reading") from error
    except RuntimeError as chained:
        assert cli.user_error(chained) == str(bad_row)
    missing = FileNotFoundError(2, "No such file or directory", "/data/x.parquet")
    assert cli.user_error(_RayTaskError(missing)) == "/data/x.parquet: No such file or directory"
    assert cli.user_error(_RayTaskError(ValueError("a shape bug"))) is None
    assert cli.user_error(KeyError("vocab_size")) is None


def test_a_bug_keeps_its_traceback(monkeypatch):
    def bug(args):
        raise KeyError("vocab_size")

    monkeypatch.setitem(cli.COMMANDS, "config", replace(cli.COMMANDS["config"], run=bug))
    with pytest.raises(KeyError):
        cli.main(["config", "show"])
