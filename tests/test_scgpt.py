"""Starting from a pretrained scGPT checkpoint: weight mapping, vocabulary, values, refusals.

The checkpoints are written by ``tests/scgpt_reference.py`` (scGPT's module structure, random
weights, both key layouts); nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from factories import make_config
from scgpt_reference import scgpt_vocab, write_scgpt_dir

from gil.config import config_from_dict, run_params
from gil.data.layout import Split
from gil.data.model_vocab import match_genes
from gil.data.prepare import bin_rows, run_prepare, value_representation
from gil.data.split import run_split
from gil.data.vocab import Vocabulary
from gil.errors import GilError
from gil.train.loop import build_model_reporting

MODEL_GENES = [f"GENE{j}" for j in range(10)] + ["Mixed", "MIXED"]
# Dataset genes: exact matches, one up to case (gene1 -> GENE1), two new genes.
DATASET_GENES = ["GENE3", "gene1", "NEW_A", "GENE7", "GENE0", "NEW_B"]


def _pretrained_config(directory: Path, **model: object) -> object:
    return make_config(model={"init": {"from": "scgpt", "path": str(directory)}, "max_seq": 32, **model})


@pytest.mark.parametrize("layout", ["torch", "flash"])
def test_forward_matches_the_scgpt_reference(tmp_path: Path, layout: str) -> None:
    """MLM, MVC and cell embedding equal scGPT's computation on the same cells (both key layouts)."""
    reference = write_scgpt_dir(tmp_path / "model", MODEL_GENES, layout=layout)
    vocab = Vocabulary(genes=tuple(DATASET_GENES), set_sizes=(len(DATASET_GENES),))
    model, imported = build_model_reporting(_pretrained_config(tmp_path / "model"), vocab, seed=0)
    model.eval()
    assert (imported.pretrained_genes, imported.new_genes) == (4, 2)
    rows = scgpt_vocab(MODEL_GENES)
    # gil token -> scGPT token: <pad>, <cls>, then the dataset genes the model knows.
    to_scgpt = {
        0: rows["<pad>"],
        1: rows["<cls>"],
        2: rows["GENE3"],
        3: rows["GENE1"],
        5: rows["GENE7"],
        6: rows["GENE0"],
    }
    genes = torch.tensor([[1, 2, 3, 5, 6, 0], [1, 6, 5, 3, 2, 5]])
    # -1 is the mask value; 700 and 5000 are above scGPT's clamp at 512 (they must encode alike).
    values = torch.tensor([[0.0, 3.0, -1.0, 700.0, 5000.0, 0.0], [0.0, 2.0, 5.0, 600.0, 50.0, 7.0]])
    padding = genes == 0
    with torch.no_grad():
        mlm, mvc, cell = reference(genes.clone().apply_(to_scgpt.get), values, padding)
        output = model(genes, values, padding)
    real = ~padding
    torch.testing.assert_close(output.mlm[real], mlm[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.mvc[real], mvc[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.cell, cell, rtol=1e-5, atol=1e-5)
    assert output.mlm.std() > 0.01 and output.mvc.std() > 0.01  # not a degenerate comparison


def test_known_genes_get_their_checkpoint_rows_and_new_genes_seeded_random_rows(tmp_path: Path) -> None:
    write_scgpt_dir(tmp_path / "model", MODEL_GENES)
    table = torch.load(tmp_path / "model" / "best_model.pt", weights_only=True)["encoder.embedding.weight"]
    rows = scgpt_vocab(MODEL_GENES)
    vocab = Vocabulary(genes=tuple(DATASET_GENES), set_sizes=(len(DATASET_GENES),))
    config = _pretrained_config(tmp_path / "model")
    weight = build_model_reporting(config, vocab, seed=0)[0].gene_embedding.weight.detach()
    for token, symbol in [(0, "<pad>"), (1, "<cls>"), (2, "GENE3"), (3, "GENE1"), (5, "GENE7"), (6, "GENE0")]:
        assert torch.equal(weight[token], table[rows[symbol]]), symbol
    new = weight[[4, 7]]
    assert not any(torch.equal(row, other) for row in new for other in table)
    again = build_model_reporting(config, vocab, seed=0)[0].gene_embedding.weight.detach()
    assert torch.equal(again, weight)  # the new rows are seeded


def test_case_rules_of_symbol_matching() -> None:
    model = {"CD3E": 5, "Actb": 6, "ACTB": 7, "<pad>": 0, "XIST": 8}
    genes = ["Cd3e", "ACTB", "actb", "Actb", "<pad>", "Xist", "XIST ", "xist"]
    # Cd3e: one symbol up to case -> CD3E. ACTB/Actb exact. actb: two vocabulary symbols up to case
    # -> new. <pad> never matches a gene here (model_genes leaves special tokens out; this map keeps
    # it to show a literal match is what decides). Xist and xist both claim XIST -> both new.
    assert match_genes(genes, model) == [5, 7, None, 6, 0, None, None, None]
    assert match_genes(["XIST", "xist"], model) == [8, None]  # an exactly taken row is not reused


def test_bins_by_hand() -> None:
    # One cell, n_bins 5 -> edges = quantiles (0, 1/3, 2/3, 1) of the non-zeros (1, 2, 3, 4):
    # 1, 2, 3, 4. digitize(left) = 1, 2, 3, 4; digitize(right) = 0, 1, 2, 3 -> bins 1, 2, 3, 4.
    # A second cell with ties: non-zeros (1, 1, 1, 5), edges (1, 1, 1, 5): a 1 lies in bins 1..3
    # (scGPT draws one of them), gil takes the middle, 2; 5 -> left 4, right 3 -> 4.
    indptr = np.array([0, 5, 10])
    values = np.array([0, 1, 2, 3, 4, 1, 1, 0, 1, 5], dtype=np.float32)
    assert bin_rows(indptr, values, 5).tolist() == [0, 1, 2, 3, 4, 2, 2, 0, 2, 4]
    # n_bins 3 -> edges (min, max): everything between gets the middle of bins 1..2 -> 1 or 2.
    assert bin_rows(np.array([0, 3]), np.array([1, 2, 9], dtype=np.float32), 3).tolist() == [1, 1, 2]


def test_values_follow_the_checkpoint(tmp_path: Path) -> None:
    write_scgpt_dir(tmp_path / "binned", MODEL_GENES)
    write_scgpt_dir(tmp_path / "log", MODEL_GENES, input_style="log1p")
    assert value_representation(_pretrained_config(tmp_path / "binned")) == ("binned", 11)
    assert value_representation(_pretrained_config(tmp_path / "log")) == ("log1p", None)
    assert value_representation(make_config()) == ("log1p", None)
    override = make_config(
        model={"init": {"from": "scgpt", "path": str(tmp_path / "binned")}},
        prepare={"values": "log1p"},
    )
    assert value_representation(override) == ("log1p", None)


def test_the_checkpoint_fixes_the_sizes_and_stage_zero_is_not_trained(tmp_path: Path) -> None:
    write_scgpt_dir(tmp_path / "model", MODEL_GENES)
    sizes = _pretrained_config(tmp_path / "model").model.resolved()
    assert {k: sizes[k] for k in ("n_layers", "d_model", "n_heads", "d_ff", "activation", "value_clamp")} == {
        "n_layers": 2,
        "d_model": 16,
        "n_heads": 2,
        "d_ff": 32,
        "activation": "relu",
        "value_clamp": 512.0,
    }
    with pytest.raises(GilError, match=r"model\.d_model: set by the checkpoint"):
        _pretrained_config(tmp_path / "model", d_model=32)
    with pytest.raises(GilError, match="base_epochs 0 leaves a randomly initialised model"):
        make_config(train={"base_epochs": 0})


def _scgpt_params(tiny_params: dict, directory: Path, **genes: object) -> dict:
    params = {**tiny_params, "model": {"preset": "tiny", "init": {"from": "scgpt", "path": str(directory)}}}
    params["split"] = {**params["split"], "genes": {"method": "new_to_model", "n_stages": 2, **genes}}
    return params


# Half of the synthetic genes (gene0000..gene0059), in upper case, plus genes the data lacks.
HALF = [f"GENE{j:04d}" for j in range(0, 60, 2)] + ["OTHER1", "OTHER2"]


@pytest.fixture(scope="module")
def pretrained_project(tmp_path_factory: pytest.TempPathFactory, synthetic_h5ad: Path) -> tuple[dict, Path]:
    """(params, directory) of a binned prepare + new_to_model split of the synthetic data. Read-only."""
    from conftest import _tiny_params

    root = tmp_path_factory.mktemp("scgpt")
    write_scgpt_dir(root / "model", HALF)
    params = _scgpt_params(_tiny_params(synthetic_h5ad), root / "model", assign="random")
    config = config_from_dict(params)
    run_prepare(config, root / "processed")
    run_split(config, root / "processed", root / "split")
    return params, root


def test_new_to_model_split_and_binned_values(pretrained_project: tuple[dict, Path]) -> None:
    params, root = pretrained_project
    split = Split.load(root / "split")
    base = dict(split.gene_sets)["B"]
    processed_genes = [
        line.split("\t")[0] for line in (root / "processed" / "genes.tsv").read_text().splitlines()[1:]
    ]
    assert sorted(base) == sorted(g for g in processed_genes if g.upper() in HALF)
    new = [g for name, genes in split.gene_sets[1:] for g in genes]
    assert sorted(new) == sorted(g for g in processed_genes if g.upper() not in HALF)
    assert [name for name, _ in split.gene_sets] == ["B", "T1", "T2"]
    values = np.load(root / "processed" / "values.npy")
    assert set(np.unique(values)) <= set(range(1, 11)) and values.max() == 10
    summary = json.loads((root / "processed" / "prepare.json").read_text())
    assert (summary["values"], summary["n_bins"]) == ("binned", 11)


def test_dropped_keys_are_in_the_run_params(pretrained_project: tuple[dict, Path]) -> None:
    params, root = pretrained_project
    flat = run_params(
        config_from_dict({**params, "strategies": {"finetune": {"kind": "finetune"}}}), "finetune"
    )
    dropped = flat["model.init.dropped_keys"].split(",")
    assert "cls_decoder.0.weight" in dropped and "flag_encoder.weight" in dropped
    assert "encoder.embedding.weight[<eoc>]" in dropped
    assert len(flat["model.init.state_sha256"]) == 64 and len(flat["model.init.vocab_sha256"]) == 64


@pytest.mark.parametrize("vocabulary", ["growing", "preallocated"])
def test_other_split_methods_on_a_pretrained_model(
    vocabulary: str, tmp_path: Path, pretrained_project: tuple[dict, Path]
) -> None:
    """method random: known B genes keep their rows; stage genes start as new genes, even known ones."""
    params, root = pretrained_project
    params = {**params, "split": {**params["split"], "genes": {"method": "random", "stage_fraction": 0.2}}}
    params["model"] = {**params["model"], "vocabulary": vocabulary}
    config = config_from_dict(params)
    run_split(config, root / "processed", tmp_path / "split")
    vocab = Vocabulary.from_split(Split.load(tmp_path / "split"))
    model, imported = build_model_reporting(config, vocab, seed=0)
    table = torch.load(root / "model" / "best_model.pt", weights_only=True)["encoder.embedding.weight"]
    rows, weight = scgpt_vocab(HALF), model.gene_embedding.weight.detach()
    known = [(token, rows.get(gene.upper())) for token, gene in enumerate(vocab.genes, start=2)]
    base = known[: vocab.set_sizes[0]]
    assert imported.pretrained_genes == sum(row is not None for _, row in base) > 0
    assert all(torch.equal(weight[token], table[row]) for token, row in base if row is not None)
    later = [(t, row) for t, row in known[vocab.set_sizes[0] :] if row is not None and t < len(weight)]
    assert len(later) > 0 or vocabulary == "growing"
    assert not any(torch.equal(weight[token], table[row]) for token, row in later)


def test_base_epochs_adapt_the_pretrained_model(
    pretrained_project: tuple[dict, Path], tmp_path: Path
) -> None:
    from gil.data.layout import ProcessedData
    from gil.train.loop import train_base

    params, root = pretrained_project
    config = config_from_dict({**params, "train": {**params["train"], "base_epochs": 1}})
    records = train_base(
        config, ProcessedData.load(root / "processed"), Split.load(root / "split"), tmp_path, progress=False
    )
    assert len(records[0][0].epochs) == 1 and records[0][0].optimizer_steps > 0
    payload = torch.load(tmp_path / "seed_0" / "stage_0.pt", weights_only=True)
    state = torch.load(root / "model" / "best_model.pt", weights_only=True)
    assert not torch.equal(payload["model"]["mlm_head.0.weight"], state["decoder.fc.0.weight"])


def _break_state(directory: Path, add: str | None = None, remove: str | None = None) -> None:
    state = torch.load(directory / "best_model.pt", weights_only=True)
    if add:
        state[add] = torch.zeros(3)
    if remove:
        del state[remove]
    torch.save(state, directory / "best_model.pt")


ARGS_REFUSALS = {
    "pre_norm": ({"pre_norm": True}, "pre_norm=True is not supported"),
    "batch_labels": ({"use_batch_labels": True}, "use_batch_labels=True is not supported"),
    "dsbn": ({"DSBN": True}, "DSBN=True is not supported"),
    "category": ({"input_emb_style": "category"}, "input_emb_style='category' is not supported"),
    "scaling": ({"input_emb_style": "scaling"}, "input_emb_style='scaling' is not supported"),
    "zero_probs": ({"explicit_zero_prob": True}, "explicit_zero_prob=True is not supported"),
    "avg_pool": ({"cell_emb_style": "avg-pool"}, "cell_emb_style='avg-pool' is not supported"),
    "mask_value": ({"mask_value": -3}, "mask_value=-3 is not supported"),
    "no_sizes": ({"nlayers": None}, "nlayers is missing"),
}
STATE_REFUSALS = {
    "dsbn_key": ("dsbn.bns.0.weight", None, "domain-specific batch norm"),
    "batch_key": ("batch_encoder.embedding.weight", None, "batch labels"),
    "zero_logit_key": ("decoder.zero_logit.0.weight", None, "explicit zero probabilities"),
    "unknown_key": ("foo.bar", None, "not part of scGPT's TransformerModel"),
    "missing_key": (None, "decoder.fc.4.bias", "lacks weights for"),
}
FILE_REFUSALS = {
    "no_args": ("args.json", "args.json not found"),
    "no_vocab": ("vocab.json", "vocab.json not found"),
    "no_state": ("best_model.pt", "holds no best_model.pt or model.pt"),
}


def _expect_refusal(result, needle: str, out: Path) -> None:  # noqa: ANN001 - conftest.CliResult
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", list(ARGS_REFUSALS) + list(FILE_REFUSALS))
def test_unusable_checkpoint_directories_are_refused_before_prepare(
    name: str,
    tmp_path: Path,
    tiny_params: dict,
    write_params,
    run_cli,  # noqa: ANN001
) -> None:
    directory = tmp_path / "model"
    if name in ARGS_REFUSALS:
        overrides, needle = ARGS_REFUSALS[name]
        write_scgpt_dir(directory, HALF, **overrides)
    else:
        missing, needle = FILE_REFUSALS[name]
        write_scgpt_dir(directory, HALF)
        (directory / missing).unlink()
    params = write_params(_scgpt_params(tiny_params, directory))
    _expect_refusal(
        run_cli("prepare", "-p", params, "--out", tmp_path / "processed"), needle, tmp_path / "processed"
    )


@pytest.mark.parametrize("name", list(STATE_REFUSALS))
def test_state_dicts_gil_cannot_represent_are_refused_before_training(
    name: str,
    tmp_path: Path,
    pretrained_project: tuple[dict, Path],
    write_params,
    run_cli,  # noqa: ANN001
) -> None:
    params, root = pretrained_project
    directory = tmp_path / "model"
    shutil.copytree(root / "model", directory)
    add, remove, needle = STATE_REFUSALS[name]
    _break_state(directory, add, remove)
    params = write_params(
        {**params, "model": {**params["model"], "init": {"from": "scgpt", "path": str(directory)}}}
    )
    out = tmp_path / "base"
    result = run_cli(
        "train-base", "-p", params, "--processed", root / "processed", "--split", root / "split", "--out", out
    )
    _expect_refusal(result, needle, out)


def test_train_base_keeps_the_pretrained_model_as_stage_zero(
    tmp_path: Path,
    pretrained_project: tuple[dict, Path],
    write_params,
    run_cli,  # noqa: ANN001
) -> None:
    params, root = pretrained_project
    out = tmp_path / "base"
    result = run_cli(
        "train-base",
        "-p",
        write_params(params),
        "--processed",
        root / "processed",
        "--split",
        root / "split",
        "--out",
        out,
    )
    assert result.code == 0, result.stderr
    assert "dropped keys: flag_encoder.weight, cls_decoder.0.weight" in result.stderr  # the log lists them
    payload = torch.load(out / "seed_0" / "stage_0.pt", weights_only=True)
    assert payload["epochs"] == [] and payload["optimizer_steps"] == 0
    state = torch.load(root / "model" / "best_model.pt", weights_only=True)
    assert torch.equal(
        payload["model"]["layers.1.qkv.weight"],
        state["transformer_encoder.layers.1.self_attn.in_proj_weight"],
    )
    assert torch.equal(payload["model"]["mvc_cell.weight"], state["mvc_decoder.W.weight"].t())
    assert payload["model_sizes"]["activation"] == "relu"
    assert yaml.safe_load(yaml.safe_dump(params))  # params stay plain YAML (a path, not an object)


@pytest.mark.slow
def test_dvc_repro_from_a_pretrained_model(
    tmp_path: Path, synthetic_h5ad: Path, command_server: Path
) -> None:
    """``dvc repro`` with finetune and replay from an scGPT checkpoint knowing half of the genes."""
    import mlflow
    from conftest import build_tiny_project

    from gil.scgpt_dir import identity

    def customise(params: dict, repo: Path) -> None:
        write_scgpt_dir(repo / "pretrained", HALF, layout="flash")
        params["model"] = {"preset": "tiny", "init": {"from": "scgpt", "path": "pretrained"}}
        params["split"]["genes"] = {"method": "new_to_model", "assign": "importance"}
        params["tracking"]["register_models"] = True

    repo = tmp_path / "project"
    repo.mkdir()
    build_tiny_project(repo, synthetic_h5ad, customise, command_server)
    split = Split.load(repo / "data" / "split")
    sets = dict(split.gene_sets)
    assert all(gene.upper() in HALF for gene in sets["B"]) and all(
        g.upper() not in HALF for g in sets["T1"] + sets["T2"]
    )
    state = torch.load(repo / "pretrained" / "best_model.pt", weights_only=True)
    rows = scgpt_vocab(HALF)
    base = torch.load(repo / "checkpoints" / "base" / "seed_0" / "stage_0.pt", weights_only=True)
    table = base["model"]["gene_embedding.weight"]
    assert table.shape[0] == 2 + len(sets["B"])  # stage 0: the known genes only
    for token, gene in enumerate(sets["B"], start=2):  # stage 0 is the imported model, bit for bit
        assert torch.equal(table[token], state["encoder.embedding.weight"][rows[gene.upper()]])
    assert torch.equal(
        base["model"]["layers.0.qkv.weight"], state["transformer_encoder.layers.0.self_attn.Wqkv.weight"]
    )
    for name in ("finetune", "replay"):
        stage_1 = torch.load(repo / "checkpoints" / name / "seed_0" / "stage_1.pt", weights_only=True)
        assert stage_1["model"]["gene_embedding.weight"].shape[0] == 2 + len(sets["B"]) + len(sets["T1"])
        metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())
        assert len(metrics["regression"]["matrix"]) == 3
    mlflow.set_tracking_uri(f"sqlite:///{repo}/mlruns/mlflow.db")
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`gil.kind` = 'parent'")
    assert set(runs["tags.gil.strategy"]) == {"finetune", "replay"}
    assert set(runs["params.model.init.state_sha256"]) == {identity(repo / "pretrained")["state_sha256"]}
    assert set(runs["params.model.activation"]) == {"relu"}
    assert "cls_decoder.0.weight" in runs["params.model.init.dropped_keys"].iloc[0]
    assert set(runs["tags.gil.init.vocab_sha256"]) == {identity(repo / "pretrained")["vocab_sha256"]}
    versions = mlflow.MlflowClient().search_model_versions("name = 'gil-synthetic-replay'")
    assert len(versions) == 3
    assert {v.tags["gil.init.state_sha256"] for v in versions} == {
        identity(repo / "pretrained")["state_sha256"]
    }
