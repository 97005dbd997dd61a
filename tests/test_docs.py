"""The docs cannot rot: every ```bash and ```python block of README.md and docs/*.md is run, or its commands
checked, and every local link resolves.

A marker before each block says which, visibly in the page's source:

- ``<!-- doc-test: run -->``: run as written in one scratch folder that every page shares; the quickstart's blocks
  run first (they make ``my_docs/`` and ``indexes/mystore``, on which the other blocks run). bash runs with
  ``dretriever`` on the PATH and ``BEIR_DATA`` set; python runs in this process. ``SUBSTITUTIONS`` lists the
  few names the test replaces, per page.
- ``<!-- doc-test: run in repo -->``: the same at the repository root (for blocks reading files kept there).
- ``<!-- doc-test: output -->`` before a ```text block: its lines are printed, in this order, by the run block
  before it.
- ``<!-- doc-test: help -->``: too costly to run here (training, full BEIR, clusters, servers, large builds).
  Each command is checked instead: ``dretriever X`` (also ``-m dretriever X`` under torchrun or accelerate
  launch) and ``python eval/x.py`` exit 0 on ``--help`` and list every ``--option`` the command uses; a recipe,
  script or config it names exists; each ``$BEIR_DATA/<dataset>`` exists; a ``curl`` is sent as written by curl
  itself to ``dretriever serve``'s app over the quickstart's datastore on 127.0.0.1 and must get a 2xx (or a 422
  on ``filter``: that datastore declares no filter keys). A python block is compiled, its imports resolve, and
  the attributes and keyword arguments it uses on imported names, and on the objects their calls return, exist.

Commands quoted inline (``dretriever ...``, ``python eval/...`` spans in prose and tables) get the help check.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, SCIFACT
from tests.uvicorn_thread import serving as uvicorn_serving

PAGES = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))]
QUICKSTART = "docs/quickstart.md"
POLICIES = ("run", "run in repo", "help")
SUBSTITUTIONS = {"docs/datastores.md": {"indexes/scifact.minilm": "indexes/mystore"}}  # an index the test has
SHELL_TOOLS = {"mkdir", "echo", "export", "cp", "mv", "rm", "cat", "ls", "cd", "source"}
REPO_FILE = re.compile(r"^(recipes|scripts|eval|docs|tests|dretriever)/[^<>*]*\.(yaml|yml|sh|py|md)$")
BEIR_PATH = re.compile(r"\$\{?BEIR_DATA\}?/([^/\s'\"]+)")
API_KEY = "doc-test-key"
# Scripts the docs name that are known to be broken: their check is an expected failure until fixed (then it
# fails, so that the entry is removed). None at present.
KNOWN_BROKEN: dict[str, str] = {}
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------ the pages' blocks
@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    policy: str | None
    output: str | None = None  # the ```text block marked output that follows, if any

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


MARKER = re.compile(r"^<!-- doc-test: (.+?) -->$")


def page_blocks(page: str) -> list[Block]:
    """The fenced blocks of ``page`` with the marker before each (blank lines may separate them)."""
    blocks, marker, lines = [], None, (REPO / page).read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if m := MARKER.match(line.strip()):
            marker = m.group(1)
        elif line.startswith("```"):
            lang, start, i = line[3:].strip(), i, i + 1
            while not lines[i].startswith("```"):
                i += 1
            text = "\n".join(lines[start + 1:i]) + "\n"
            if marker == "output" and blocks:
                blocks[-1].output = text
            else:
                blocks.append(Block(page, start + 1, lang, text, marker))
            marker = None
        elif line.strip():
            marker = None
        i += 1
    return blocks


BLOCKS = [b for page in PAGES for b in page_blocks(page) if b.lang in ("bash", "python")]


def blocks_with(policy: str, quickstart: bool = False) -> list[Block]:
    return [b for b in BLOCKS if b.policy == policy and (b.page == QUICKSTART) == quickstart]


# ------------------------------------------------------------------ data
def dataset_dir(name: str) -> Path:
    """``$BEIR_DATA/<name>``; under CI (``CI=true``) its absence fails the test instead of skipping it."""
    path = SCIFACT.parent / name
    if not path.is_dir():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{path} is missing; CI needs it (the docs name it)")
        pytest.skip(f"{path} not found")
    return path


def beir_datasets(text: str) -> set[str]:
    return set(BEIR_PATH.findall(text))


# ------------------------------------------------------------------ running blocks
def run_bash(block: Block, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "BEIR_DATA": str(SCIFACT.parent)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", substituted(block)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
    return done.stdout


def run_python(block: Block, cwd: Path) -> str:
    out, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(substituted(block), block.id, "exec"), {"__name__": "__doc_block__"})  # noqa: S102
    finally:
        os.chdir(here)
    return out.getvalue()


def substituted(block: Block) -> str:
    text = block.text
    for old, new in SUBSTITUTIONS.get(block.page, {}).items():
        text = text.replace(old, new)
    return text


def run_block(block: Block, cwd: Path) -> str:
    printed = (run_bash if block.lang == "bash" else run_python)(block, cwd)
    if block.output is not None:
        assert_prints(printed, block.output, block.id)
    return printed


def assert_prints(printed: str, expected: str, where: str) -> None:
    """Every line of ``expected`` is a line of ``printed`` (trailing spaces aside), in the same order."""
    lines = [line.rstrip() for line in printed.splitlines()]
    at = 0
    for want in expected.strip("\n").splitlines():
        assert want.rstrip() in lines[at:], f"{where}: {want!r} not printed (after line {at}):\n{printed}"
        at = lines.index(want.rstrip(), at) + 1


@pytest.fixture(scope="session")
def scratch(tmp_path_factory) -> Path:
    """The folder where the quickstart was walked as written: its run blocks in order, outputs checked."""
    folder = tmp_path_factory.mktemp("docs")
    for block in blocks_with("run", quickstart=True):
        run_block(block, folder)
    return folder


def test_the_quickstart_goes_from_a_folder_of_text_files_to_hits(scratch):
    assert sorted(p.name for p in (scratch / "my_docs").iterdir()) == ["ace.txt", "sleep.md", "statins.txt"]
    manifest = json.loads((scratch / "indexes" / "mystore" / "manifest.json").read_text())
    assert manifest["complete"] and sum(s["num_docs"] for s in manifest["shards"]) == 3
    quickstart = page_blocks(QUICKSTART)
    assert [b.policy for b in quickstart if b.lang in ("bash", "python")] == ["help", "run", "run", "run", "help"]
    assert sum(b.output is not None for b in quickstart) == 1  # the hits, checked by run_block
    text = (REPO / QUICKSTART).read_text()
    assert "open http://127.0.0.1:8000/ for the search page" in text.lower()
    assert "(search-page.png)" in text


@pytest.mark.parametrize("block", blocks_with("run") + blocks_with("run in repo"), ids=lambda b: b.id)
def test_run_block(block, scratch):
    for name in beir_datasets(block.text):
        dataset_dir(name)
    run_block(block, REPO if block.policy == "run in repo" else scratch)


# ------------------------------------------------------------------ commands checked by --help
@dataclass(frozen=True)
class HelpOf:
    kind: str  # "dretriever" | "script"
    target: str  # the command ("datastore build", "train --method star") or the script's path


@dataclass
class Command:
    words: list[str]
    where: str


SEPARATORS = {"&&", "||", ";", "|", "&"}


def commands(text: str, where: str) -> list[Command]:
    """The simple commands of a bash text: continuation lines joined, comments dropped, split at ``&&`` etc."""
    text, found, buffer = text.replace("\\\n", " "), [], ""
    for line in text.splitlines():
        buffer += line + "\n"
        try:
            words = shlex.split(buffer, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        buffer, current = "", []
        for word in words + [";"]:
            if word in SEPARATORS:
                if current:
                    found.append(Command(current, where))
                current = []
            else:
                current.append(word)
    assert not buffer.strip(), f"{where}: unbalanced quotes"
    return [Command(drop_redirections(c.words), c.where) for c in found]


def drop_redirections(words: list[str]) -> list[str]:
    kept, skip = [], False
    for w in words:
        if skip:
            skip = False
        elif w in (">", ">>", "<", "2>"):
            skip = True
        else:
            kept.append(w)
    while kept and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", kept[0]):  # VAR=value before the command
        kept.pop(0)
    return kept


def dretriever_target(args: list[str]) -> str:
    """The command a ``dretriever`` argument list runs (``train`` with its recipe's or --method's method)."""
    from dretriever.cli import COMMANDS
    from dretriever.train.registry import METHODS

    for n in (2, 1):
        name = " ".join(args[:n])
        if name in COMMANDS:
            break
    else:
        pytest.fail(f"dretriever {' '.join(args[:2])}: no such command")
    if name == "train":
        method = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--method"), None)
        for a in args:
            if a.endswith((".yaml", ".yml")) and (REPO / a).is_file():
                method = yaml.safe_load((REPO / a).read_text()).get("method", method)
        if method in METHODS:
            return f"train --method {method}"
    return name


def options(args: list[str]) -> list[str]:
    found = []
    for a in args:
        a = a.strip("[]")
        if a.startswith("--") and len(a) > 2:
            found.append(a.split("=", 1)[0])
    return found


@dataclass
class Check:
    """What a command of a help block needs: the --help to read, the options it must list, files, datasets."""

    help: HelpOf | None
    options: list[str]
    files: list[str]
    datasets: set[str]
    curl: list[str] | None = None


def check_of(command: Command) -> Check:
    words = command.words
    files = [w for w in words if REPO_FILE.match(w)]
    datasets = beir_datasets(" ".join(words))
    head = words[0]
    if head in ("torchrun", "accelerate"):
        assert (BIN / head).is_file(), f"{command.where}: {head} is not installed beside python"
        assert "-m" in words, f"{command.where}: {head} without -m dretriever"
        module = words.index("-m")
        assert words[module + 1] == "dretriever", f"{command.where}: {head} runs {words[module + 1]}"
        args = words[module + 2:]
        return Check(HelpOf("dretriever", dretriever_target(args)), options(args), files, datasets)
    if head == "dretriever" or words[:3] == ["python", "-m", "dretriever"]:
        args = words[1:] if head == "dretriever" else words[3:]
        return Check(HelpOf("dretriever", dretriever_target(args)), options(args), files, datasets)
    if head in ("python", "python3"):
        script = words[1]
        assert script.startswith("eval/") and (REPO / script).is_file(), f"{command.where}: no script {script}"
        return Check(HelpOf("script", script), options(words[2:]), files, datasets)
    if head == "bash":
        return Check(None, [], files + [words[1]], datasets)
    if head == "curl":
        return Check(None, [], files, datasets, curl=words[1:])
    assert head in SHELL_TOOLS, f"{command.where}: no rule checks the command {head!r} (add one to tests/test_docs.py)"
    return Check(None, [], files, datasets)


HELP_RUNNER = r"""
import contextlib, io, json, runpy, sys
from dretriever.cli import main
answers = {}
for kind, target in json.load(sys.stdin):
    out = io.StringIO()
    argv = sys.argv[:]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            if kind == "dretriever":
                code = main([*target.split(), "--help"])
            else:
                sys.argv = [target, "--help"]
                sys.path.insert(0, target.rsplit("/", 1)[0])
                runpy.run_path(target, run_name="__main__")
                code = 0
        except SystemExit as e:
            code = e.code or 0
        except BaseException as e:
            code, out = 1, io.StringIO(f"{type(e).__name__}: {e}")
    sys.argv = argv
    answers[f"{kind}\t{target}"] = [code, out.getvalue()]
json.dump(answers, open(sys.argv[1], "w"))
"""


def inline_commands(page: str) -> list[Command]:
    """``dretriever ...`` and ``python eval/...`` code spans outside fenced blocks (a span may wrap a line)."""
    text = re.sub(r"^```.*?^```", "", (REPO / page).read_text(), flags=re.S | re.M)
    found = []
    for span in re.findall(r"`([^`]+)`", text):
        span = " ".join(span.split())
        if span.startswith(("dretriever ", "python eval/")):
            found.extend(commands(span, f"{page}: `{span}`"))
    return found


def help_checks() -> dict[str, list[Check]]:
    """Per test id: the checks of its commands (help blocks' commands and each page's inline commands)."""
    checks = {b.id: [check_of(c) for c in commands(b.text, b.id)] for b in BLOCKS
              if b.policy == "help" and b.lang == "bash"}
    for page in PAGES:
        checks[f"{page}:inline"] = [check_of(c) for c in inline_commands(page)]
    return checks


CHECKS = help_checks()


@pytest.fixture(scope="session")
def helps(tmp_path_factory) -> dict[HelpOf, tuple[int, str]]:
    """``--help`` of every command and script the docs name, from one Python process (imports paid once)."""
    wanted = sorted({(c.help.kind, c.help.target) for cs in CHECKS.values() for c in cs if c.help})
    out = tmp_path_factory.mktemp("helps") / "helps.json"
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, str(out)], input=json.dumps(wanted), cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return {HelpOf(*key.split("\t")): tuple(v) for key, v in json.loads(out.read_text()).items()}


@contextlib.contextmanager
def serving(app):
    """The app served on 127.0.0.1 (tests/uvicorn_thread.py); yields its port."""
    with uvicorn_serving(app) as url:
        yield int(url.rsplit(":", 1)[1])

@pytest.fixture(scope="session")
def servers(scratch):
    """``dretriever serve indexes/mystore``'s app over the quickstart's datastore: ports without and with a key."""
    from dretriever.search.retriever import Retriever
    from dretriever.search.server import create_app

    retriever = Retriever.load(scratch / "indexes" / "mystore")
    with serving(create_app(retriever, name="mystore")) as plain, \
            serving(create_app(retriever, name="mystore", api_key=API_KEY)) as keyed:
        yield {"plain": plain, "keyed": keyed}


def send_curl(args: list[str], servers: dict, where: str) -> None:
    """Run the curl command as written against the test's server (its port and API key substituted)."""
    keyed = any("$DRETRIEVER_API_KEY" in a for a in args)
    port = servers["keyed" if keyed else "plain"]
    args = [a.replace("$DRETRIEVER_API_KEY", API_KEY) for a in args]
    args = [re.sub(r"^(http://)?(localhost|127\.0\.0\.1):8000", f"http://127.0.0.1:{port}", a) for a in args]
    done = subprocess.run(["curl", *args, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{where}: curl exited {done.returncode}: {done.stderr}"
    body, status = done.stdout.rsplit("\n", 1)
    if int(status) == 422 and "unknown key" in json.loads(body)["error"]:
        # the quickstart's datastore declares no filter keys: the filter must parse with keys typed by its values
        from dretriever.index.filters import parse_filter

        sent = json.loads(args[args.index("-d") + 1])["filter"]
        parse_filter(sent, {key: value_type(value) for key, value in sent.items() if key != "doc_id"})
        return
    assert 200 <= int(status) < 300, f"{where}: {' '.join(args)} -> {status} {body}"


def value_type(condition) -> str:
    """The key type (int | float | str) of a condition's value: ``2015``, ``{"gte": 2015}``, ``{"in": [...]}``."""
    while isinstance(condition, (dict, list)):
        condition = next(iter(condition.values())) if isinstance(condition, dict) else condition[0]
    return {int: "int", float: "float"}.get(type(condition), "str")


def assert_checks(checks: list[Check], helps, request, where: str) -> None:
    for check in checks:
        for name in check.datasets:
            dataset_dir(name)
        for path in check.files:
            assert (REPO / path).is_file(), f"{where}: {path} does not exist"
        if check.help:
            code, text = helps[check.help]
            if check.help.target in KNOWN_BROKEN:
                assert code != 0, f"{check.help.target} works again: remove it from KNOWN_BROKEN"
                pytest.xfail(f"{check.help.target}: {KNOWN_BROKEN[check.help.target]}")
            assert code == 0, f"{where}: {check.help.target} --help exited {code}:\n{text[-2000:]}"
            missing = [o for o in check.options if not re.search(re.escape(o) + r"(?![\w-])", text)]
            assert not missing, f"{where}: {check.help.target} has no option {', '.join(missing)}"
        if check.curl is not None:
            send_curl(check.curl, request.getfixturevalue("servers"), where)


@pytest.mark.parametrize("where", sorted(CHECKS), ids=str)
def test_commands_of_help_blocks_and_inline_commands(where, helps, request):
    assert_checks(CHECKS[where], helps, request, where)


# ------------------------------------------------------------------ python blocks checked without running
class NamesUsed(ast.NodeVisitor):
    """Attributes and keyword arguments used on imported names, and on what their calls return (by annotation)."""

    def __init__(self, where: str):
        self.where, self.known = where, {}

    def resolve(self, node):
        if isinstance(node, ast.Name):
            return self.known.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is not None:
                assert hasattr(base, node.attr), f"{self.where}: {getattr(base, '__name__', base)} has no {node.attr}"
                return getattr(base, node.attr)
        return None

    def returned(self, func):
        """The class a call of ``func`` returns: a class itself, or a return annotation naming one."""
        if inspect.isclass(func):
            return func
        annotation = inspect.signature(func).return_annotation
        if isinstance(annotation, str):
            annotation = vars(sys.modules[func.__module__]).get(annotation.strip("'\""))
        return annotation if inspect.isclass(annotation) else None

    def visit_Import(self, node):
        for alias in node.names:
            self.known[alias.asname or alias.name.split(".")[0]] = importlib.import_module(alias.name.split(".")[0])

    def visit_ImportFrom(self, node):
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name), f"{self.where}: {node.module} has no {alias.name}"
            self.known[alias.asname or alias.name] = getattr(module, alias.name)

    def visit_Attribute(self, node):
        self.resolve(node)
        self.generic_visit(node)

    def visit_Call(self, node):
        func = self.resolve(node.func)
        try:
            params = inspect.signature(func).parameters if callable(func) else None
        except (TypeError, ValueError):  # a builtin without a signature
            params = None
        if params is not None:
            if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                for kw in node.keywords:
                    assert kw.arg is None or kw.arg in params, f"{self.where}: {func.__qualname__} takes no {kw.arg}="
        self.generic_visit(node)

    def visit_Assign(self, node):
        self.visit(node.value)
        kind = None
        if isinstance(node.value, ast.Call) and callable(func := self.resolve(node.value.func)):
            kind = self.returned(func)
        for target in node.targets:
            if isinstance(target, ast.Name):
                if kind is not None:
                    self.known[target.id] = kind
                else:
                    self.known.pop(target.id, None)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.policy == "help" and b.lang == "python"], ids=lambda b: b.id)
def test_python_help_block_names_what_exists(block):
    NamesUsed(block.id).visit(ast.parse(block.text, block.id))


# ------------------------------------------------------------------ markers and links
def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_block_is_marked_and_every_local_link_resolves():
    unmarked = [b.id for b in BLOCKS if b.policy not in POLICIES]
    assert unmarked == [], f"bash/python blocks without <!-- doc-test: run | run in repo | help -->: {unmarked}"
    unchecked = [b.id for b in BLOCKS if b.output is not None and not b.policy.startswith("run")]
    assert unchecked == [], f"an output block after a block that is not run: {unchecked}"
    assert {p for p in PAGES if p.startswith("docs/")} >= {
        f"docs/{n}.md" for n in ("quickstart", "training", "evaluation", "datastores", "serving", "ray",
                                 "benchmarks", "formats")}
    broken = []
    for page in PAGES:
        text = re.sub(r"^```.*?^```", "", (REPO / page).read_text(), flags=re.S | re.M)
        for target in re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (REPO / page).parent / path if path else REPO / page
            if not file.exists():
                broken.append(f"{page}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page}: {target} (no such heading)")
    assert broken == []
    assert len((REPO / "README.md").read_text().splitlines()) < 130
