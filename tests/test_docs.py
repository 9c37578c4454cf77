"""The user-facing documentation against the code: README's API section names every public name, its
demo paragraph every `demo` option, its Layout table every top-level directory, and the repository paths it
cites exist; docstrings give formulas, shapes and dtypes."""
import os
import re

import entropy_ops
from entropy_ops.__main__ import main

from conftest import REPO_ROOT


def _readme():
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        return f.read()


def _section(text, title):
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else len(text)]


def test_readme_api_section_names_every_public_name():
    api = _section(_readme(), "API")
    missing = [name for name in entropy_ops.__all__ if f"`{name}" not in api]
    assert not missing, f"README's API section does not mention {missing}"


def _options(command, capsys):
    try:
        main([command, "--help"])
    except SystemExit:
        pass
    return set(re.findall(r"(--[a-z][a-z-]*)", capsys.readouterr().out)) - {"--help"}


def test_readme_names_every_demo_option(capsys):
    text = _readme()
    paragraph = text[text.index("`python -m entropy_ops demo`"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    missing = sorted(o for o in _options("demo", capsys) if f"`{o}" not in paragraph)
    assert not missing, f"README's demo paragraph does not name {missing}"


def test_repository_paths_the_readme_cites_exist():
    cited = set(re.findall(r"`((?:tests|\.ci|csrc|entropy_ops|benchmarks)/[\w./-]+)`", _readme()))
    assert len(cited) > 10
    missing = sorted(p for p in cited if not os.path.exists(os.path.join(REPO_ROOT, p)))
    assert not missing, f"README cites paths that do not exist: {missing}"


def test_loss_docstrings_give_formulas_shapes_and_dtypes():
    """STYLE: docstrings give shapes and dtypes of every output, and the formula."""
    returns = entropy_ops.clip_cov_policy_loss.__doc__.split("Returns:")[1]
    assert "0-d" in returns and "dtype" in returns and "bool" in returns
    assert "clip_cov_policy_loss" in entropy_ops.kl_cov_policy_loss.__doc__.split("Returns:")[1]
    doc = " ".join(entropy_ops.agg_loss.__doc__.split())
    for mode in ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"):
        assert f"``{mode}`` = " in doc, mode


def test_linear_docstring_states_the_backward_chunks_the_driver_keeps():
    """The public docstring's memory claim is the chunked driver's (backends/torch_linear.py)."""
    from entropy_ops.backends import torch_linear
    assert "up to four" in torch_linear.__doc__
    doc = " ".join(entropy_ops.linear_logprobs_and_entropy.__doc__.split())
    assert "one chunk of float32 logits (up to four in a backward with ``softcap`` and K > 1 labels)" in doc


def test_readme_layout_names_every_top_level_directory():
    """Hidden directories other than ``.ci`` (a venv, caches, an editor's) and build outputs are not layout."""
    ignored = {"build", "dist", "__pycache__"}
    layout = _section(_readme(), "Layout")
    dirs = [d for d in os.listdir(REPO_ROOT) if os.path.isdir(os.path.join(REPO_ROOT, d))
            and (d == ".ci" or not d.startswith(".")) and d not in ignored and not d.endswith(".egg-info")]
    missing = sorted(d for d in dirs if f"`{d}/`" not in layout)
    assert not missing, f"README's Layout table does not name {missing}"


def test_selective_entropy_loss_docs_say_one_mean_over_all_peak_tokens():
    """The loss pools the batch's peak tokens (not a mean of per-sequence means), as its docs say."""
    import torch
    torch.manual_seed(0)
    logits, mask = torch.randn(3, 10, 9), torch.ones(3, 10, dtype=torch.bool)
    mask[0, 5:] = False  # sequences with different numbers of peaks: the two means differ
    h = entropy_ops.top_p_entropy(logits, 0.8)
    peak = entropy_ops.peak_entropy_mask(h, mask, 0.5)
    pooled = 0.005 * (h[peak].mean() - 0.3) ** 2
    per_sequence = 0.005 * (torch.stack([h[i][peak[i]].mean() for i in range(3)]).mean() - 0.3) ** 2
    loss = entropy_ops.selective_entropy_loss(logits, mask, 0.3, peak_q=0.5)
    assert torch.allclose(loss, pooled) and not torch.allclose(loss, per_sequence)
    row = next(line for line in _readme().splitlines() if line.startswith("| `selective_entropy_loss("))
    for doc in (row, entropy_ops.selective_entropy_loss.__doc__, entropy_ops.reference.selective_entropy_loss_ref.__doc__):
        assert "all peak tokens" in " ".join(doc.split())


def test_files_the_package_sources_cite_exist():
    """A comment or docstring naming a source file (``x.py``, ``x.cu``, ...) names one that exists."""
    names = set()
    for directory, subdirs, files in os.walk(REPO_ROOT):
        subdirs[:] = [d for d in subdirs if d == ".ci" or not d.startswith((".", "build", "dist"))]
        names.update(files)
    cite = re.compile(r"``([\w./-]+\.(?:py|cu|cuh|cpp|h|md))``|\(([\w./-]+\.(?:py|cu|cuh|cpp|h|md))\)")
    stale = []
    for package in ("entropy_ops", "triton_kernels"):
        for directory, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            for name in (f for f in files if f.endswith(".py")):
                path = os.path.join(directory, name)
                with open(path) as f:
                    for number, line in enumerate(f, 1):
                        for cited in cite.findall(line):
                            cited = cited[0] or cited[1]
                            if not cited.startswith(("verl/", "trl/")) and os.path.basename(cited) not in names:
                                stale.append(f"{os.path.relpath(path, REPO_ROOT)}:{number}: {cited}")
    assert not stale, f"stale file references: {stale}"
