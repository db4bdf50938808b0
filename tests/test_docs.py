"""The documentation site builds strictly, and its references cannot drift from the code.

Why: the CLI and params references are generated from the Typer app and the pydantic models, and the
site is built with ``mkdocs build --strict``. These tests build it as ``make docs`` does (no network)
and read the generated HTML back, so a broken link, a command or key missing from the reference, or
a generator that drops a type, default or description fails here.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from pydantic import Field, create_model
from pydantic.fields import FieldInfo

from gil import docgen
from gil.cli import app
from gil.config import Config, TrainConfig
from gil.strategies import registry
from gil.sweep.space import SweepConfig

ROOT = Path(__file__).resolve().parents[1]
FREE = {"sweep": SweepConfig}


def _mkdocs(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """``mkdocs build --strict`` of ``config`` into ``site``, as ``make docs`` runs it."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _relocated_config(tmp: Path, docs: Path) -> Path:
    """A copy of ``mkdocs.yml`` in ``tmp`` building ``docs``, with every other path pointing at the repo."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["hooks"] = [str(ROOT / hook) for hook in config["hooks"]]
    for extension in config["markdown_extensions"]:
        if isinstance(extension, dict) and "pymdownx.snippets" in extension:
            extension["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            plugin["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT / "src")]
    path = tmp / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _text(fragment: str) -> str:
    """HTML as the reader sees it: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", fragment)).split())


def _rows(page: str) -> dict[str, list[str]]:
    """Table rows of a page by their first cell (each cell as text)."""
    rows = {}
    for row in re.findall(r"<tr>(.*?)</tr>", page, re.S):
        cells = [_text(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if cells:
            rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The real site, built once (strict) for the tests that read it."""
    out = tmp_path_factory.mktemp("site")
    return _mkdocs(ROOT / "mkdocs.yml", out), out


@pytest.fixture
def site(build: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    """The built site's directory; a failed build fails the test that reads it."""
    result, out = build
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_the_site_builds_strictly_with_every_page_of_the_nav(
    build: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, site = build
    assert result.returncode == 0, result.stderr[-3000:]
    assert "WARNING" not in result.stderr
    for page in (
        "index.html",
        "getting-started/index.html",
        "howto/cluster/index.html",
        "results/index.html",
    ):
        assert (site / page).is_file(), page
    results = (site / "results" / "index.html").read_text()
    assert 'id="distillation-ablation-in-the-suite-settings"' in results
    assert "ray_grid.py" in (site / "benchmarks" / "index.html").read_text()  # the snippet was included
    # nothing is fetched when a page is viewed: no Google fonts, no remote scripts
    home = (site / "index.html").read_text()
    assert "fonts.googleapis" not in home and "fonts.gstatic" not in home
    assert not re.search(r'<script[^>]+src="https?://', home)


def test_the_cli_reference_lists_every_command_and_option(site: Path) -> None:
    page = (site / "reference" / "cli" / "index.html").read_text()
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="gil")
    names = group.list_commands(ctx)
    assert {"train", "train-base", "evaluate", "sweep", "leaderboard"} <= set(names)
    for name in names:
        start = page.index(f'id="gil-{name}"')
        end = page.find("<h2 ", start + 1)
        section = _text(page[start : end if end > 0 else len(page)])
        command = group.get_command(ctx, name)
        assert " ".join((command.help or "").replace("`", "").split())[:60] in section, name
        for param in command.params:
            for opt in param.opts:
                assert opt in section, f"gil {name}: {opt}"
            if getattr(param, "help", None):
                assert " ".join(param.help.replace("`", "").split())[:50] in section, (
                    f"gil {name}: help of {param.name}"
                )


def _cell_texts(field: FieldInfo) -> list[str]:
    """What a reader sees in the type, default and description cells of a field's row."""
    return [
        docgen.type_text(field).replace("`", ""),
        docgen.default_text(field).strip("`"),
        " ".join((field.description or "").split()),
    ]


def test_the_params_reference_lists_every_key_with_its_description(site: Path) -> None:
    rows = _rows((site / "reference" / "params" / "index.html").read_text())
    keys = docgen.all_keys(Config, free_sections=FREE)
    assert {"train.lr", "compute.jobs", "split.genes.method", "model.init.from", "sweep.grace_stages"} <= set(
        keys
    )
    fields = {
        f"{path}.{field.alias or name}".lstrip("."): field
        for path, model, _ in docgen.sections(Config, free=FREE)
        for name, field in model.model_fields.items()
    }
    assert sorted(fields) == sorted(keys)
    for key, field in fields.items():
        assert key in rows, key
        assert rows[key][1:] == _cell_texts(field), key
    assert rows["train.embedding_lr_scale"][1:3] == ["float, > 0", "1.0"]
    assert rows["dataset.path"][2] == "required"
    assert rows["model.activation"][1] == "one of gelu, relu or null"
    assert rows["strategies"][3] == "named strategy runs: name: {kind: <strategy>, ...its parameters}"


def test_the_params_reference_lists_every_strategy_parameter(site: Path) -> None:
    page = (site / "reference" / "params" / "index.html").read_text()
    for kind, cls in registry().items():
        start = page.index(f"<code>kind: {kind}</code>")
        end = page.find("<h3 ", start)
        section = _rows(page[start : end if end > 0 else len(page)])
        for name, field in cls.Params.model_fields.items():
            assert section[f"strategies.<name>.{name}"][1:] == _cell_texts(field), (kind, name)


def test_every_params_key_has_a_description() -> None:
    """A key documented by its type alone is a key nobody can use: the models must say what it does."""
    missing = [
        f"{path}.{name}".lstrip(".")
        for path, model, _ in docgen.sections(Config, free=FREE)
        for name, field in model.model_fields.items()
        if not field.description
    ]
    missing += [
        f"strategies.{kind}.{name}"
        for kind, cls in registry().items()
        for name, field in cls.Params.model_fields.items()
        if not field.description
    ]
    assert missing == []


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs)
    page = docs / "getting-started.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = _mkdocs(_relocated_config(tmp_path, docs), tmp_path / "site")
    assert result.returncode != 0
    assert "'getting-started.md' contains a link 'no-such-page.md'" in result.stderr


def test_a_new_params_key_documents_itself(tmp_path: Path) -> None:
    """A field added to a config model, with a description, appears with its type, default and text."""
    description = "fraction of each stage's steps spent warming up (a key added by this test)"
    train = create_model(
        "TrainConfig",
        __base__=TrainConfig,
        warmup_ratio=(float, Field(0.125, ge=0, le=1, description=description)),
    )
    config = create_model("Config", __base__=Config, train=(train, Field(train(), description="training")))
    markdown = docgen.params_reference(config, free_sections=FREE)
    row = next(line for line in markdown.splitlines() if line.startswith("| `train.warmup_ratio` "))
    assert (
        row
        == f"| `train.warmup_ratio` | float, ≥ 0, ≤ 1 | `0.125` | {html.escape(description, quote=False)} |"
    )
    assert "train.warmup_ratio" not in docgen.params_reference(Config, free_sections=FREE)

    # Built into a page: the committed params page, unedited, with the config model swapped in.
    import gil.config

    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "docs" / "reference" / "params.md", docs / "index.md")
    (tmp_path / "mkdocs.yml").write_text(
        yaml.safe_dump(
            {
                "site_name": "params",
                "docs_dir": str(docs),
                "theme": {"name": "material", "font": False},
                "hooks": [str(ROOT / "src" / "gil" / "docgen.py")],
                "markdown_extensions": ["tables", "toc"],
            }
        )
    )
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    original = gil.config.Config
    gil.config.Config = config
    try:
        build(load_config(str(tmp_path / "mkdocs.yml"), site_dir=str(tmp_path / "site")))
    finally:
        gil.config.Config = original
    rows = _rows((tmp_path / "site" / "index.html").read_text())
    assert rows["train.warmup_ratio"] == ["train.warmup_ratio", "float, ≥ 0, ≤ 1", "0.125", description]
