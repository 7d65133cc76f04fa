"""``recsys-dist export`` through the real CLI, on the session's tiny untrained run: exit 0
writes an artefact the loader takes; a bad ``--quantize`` is one line and exit 2."""

from __future__ import annotations

from recsys_dist import cli, run_layout
from recsys_dist.checkpoint import load_checkpoint
from recsys_dist.model.quantize import Int8Bert4Rec


def test_export_writes_an_int8_artefact_the_loader_takes(tiny_run, cli_json, tmp_path, capsys):
    output = str(tmp_path / "int8")
    result = cli_json(
        "export", "--run", str(tiny_run.run), "--quantize", "int8", "--output", output
    )
    assert result["output"] == output and result["quantization"] == "int8"
    assert result["bytes"] < result["source_bytes"]
    assert isinstance(load_checkpoint(output).model, Int8Bert4Rec)
    again = ["export", "--run", str(tiny_run.run), "--quantize", "int8", "--output", output]
    assert cli.main(again) == cli.EXIT_BAD_INPUT  # it would replace the artefact
    capsys.readouterr()
    assert cli.main([*again, "--overwrite"]) == 0  # the summary names the next command
    assert f"--model {output}" in capsys.readouterr().out


def test_an_unknown_quantization_is_one_line_and_exit_2(tiny_run, tmp_path, capsys):
    argv = ["export", "--run", str(tiny_run.run), "--quantize", "int4", "--output", str(tmp_path)]
    assert cli.main(argv) == cli.EXIT_BAD_INPUT
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["error: --quantize 'int4': choose one of int8"]
    assert captured.out == "" and not any(tmp_path.iterdir())
    assert run_layout.is_run(tiny_run.run)
