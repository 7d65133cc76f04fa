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
    (line,) = captured.err.splitlines()
    assert line.startswith("error: ") and "--quantize" in line and "'int4'" in line
    assert "int8" in line  # the choices there are
    assert captured.out == "" and not any(tmp_path.iterdir())
    assert run_layout.is_run(tiny_run.run)


def test_score_and_evaluate_read_the_int8_export(tiny_run, cli_json, tmp_path):
    """``--model DIR`` puts another export of the run's model in place of RUN/model: the int8
    one ranks as the fp32 one within quantization error (the same top item for most users)."""
    import pyarrow.parquet as pq

    from recsys_dist import schema

    int8 = str(tmp_path / "int8")
    cli_json("export", "--run", str(tiny_run.run), "--quantize", "int8", "--output", int8)
    run = str(tiny_run.run)
    tops = {}
    for name, model in (("fp32", []), ("int8", ["--model", int8])):
        output = str(tmp_path / f"{name}.parquet")
        cli_json("score", "--run", run, *model, "--k", "1", "--output", output)
        table = pq.read_table(output).to_pydict()
        tops[name] = dict(zip(table[schema.USER_ID], table[schema.ITEM_ID], strict=True))
    agree = sum(tops["fp32"][user] == item for user, item in tops["int8"].items())
    assert tops["int8"].keys() == tops["fp32"].keys() and agree >= 0.8 * len(tops["fp32"])
    quantized = cli_json("evaluate", "--run", run, "--split", "valid", "--model", int8)
    assert quantized["users"] == len(tops["int8"]) and 0 <= quantized["ndcg@10"] <= 1
    again = ["export", "--run", run, "--model", int8, "--quantize", "int8", "--output", int8]
    assert cli.main(again) == cli.EXIT_BAD_INPUT  # --model is not an option of export itself
