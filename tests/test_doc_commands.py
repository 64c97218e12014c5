"""Every command the README and docs/en quote in a shell block is run by a test, or marked.

A command is covered when a rule of RUN_BY names the tests that run the same
tool: those tests must exist, and every ``--flag`` the quoted command uses
must appear in one of them. Any other command must sit in a block whose
comment line ``# needs: ...`` says what the tests do not have (a data set, a
network, checkpoints released elsewhere, a long run on a quiet machine).

Whether covered or marked, each command of mmrep's own tools must parse with
that tool's argument parser, and every config it names must exist: a renamed
flag or config breaks this test, not the reader.
"""
import ast
import glob
import importlib.util
import os.path as osp
import re
import shlex
import sys

import pytest

from conftest import REPO_ROOT

DOC_FILES = ['README.md'] + sorted(
    osp.relpath(p, REPO_ROOT) for p in glob.glob(osp.join(REPO_ROOT, 'docs', 'en', '**', '*.md'),
                                                  recursive=True))

# command (regular expression, matched at its start) -> what runs it: test functions
# ('tests/<file>.py::<name>') or a script that runs the command as it is quoted.
RUN_BY = {
    r'make test$': ['.ci/run'],
    r'make test-compat$': ['.ci/run'],
    r'make docs$': ['.ci/run', 'tests/test_docs.py::test_makefile_builds_the_docs_as_this_test_does'],
    r'pip install /path/to/mmrep$': [
        'tests/test_stock_tools.py::test_install_puts_the_start_up_hook_in_site_packages',
        'tests/test_stock_tools.py::test_stock_mmdet_tools_train_and_test_downstream_config'],
    # docs/en/user_guides/own_project.md: the test reads these commands out of the page
    r'(MMDET|MMSEG)_TOOLS=': [
        'tests/test_stock_tools.py::test_stock_mmdet_tools_train_and_test_downstream_config',
        'tests/test_stock_tools.py::test_stock_mmseg_tools_train_downstream_config'],
    r'python \$MMDET_TOOLS/': [
        'tests/test_stock_tools.py::test_stock_mmdet_tools_train_and_test_downstream_config'],
    r'python \$MMSEG_TOOLS/': [
        'tests/test_stock_tools.py::test_stock_mmseg_tools_train_downstream_config'],
    r'\.venv/bin/python tools/reparameterize\.py ': [
        'tests/test_detection_e2e.py::test_reparameterize_tool_round_trip_and_errors',
        'tests/test_openmmlab_glue.py::test_hook_and_reparameterize_tool_work_unchanged_on_other_families'],
    r'\.venv/bin/python tools/deploy\.py (?!.*--int8)(?!.*--backend openvino)': [
        'tests/test_export.py::test_retinanet_repghost_static_export',
        'tests/test_deploy_configs.py::test_detection_configs_export'],
    r'\.venv/bin/python tools/benchmark\.py ': [
        'tests/test_benchmark_tool.py::test_users_config_and_checkpoint_timed_fused_and_unfused',
        'tests/test_benchmark_tool.py::test_append_replaces_rows_of_the_same_setting_and_keeps_the_others'],
    r'HF_HUB_OFFLINE=1 \.venv/bin/python tools/train\.py configs/retinanet_repghost_1x\.py$': [
        'tests/test_pretrained_names.py::test_train_shipped_config_without_the_hub_stops_with_the_point_4_error'],
    r'\.venv/bin/python tools/deploy\.py .*--int8': [
        'tests/test_int8.py::test_int8_end_to_end_report',
        'tests/test_int8.py::test_calibration_on_held_out_val_images',
        'tests/test_deploy_configs.py::test_upernet_int8_with_miou'],
    r'\.venv/bin/python tools/deploy\.py .*--backend openvino': [
        'tests/test_deploy_openvino.py::test_detection_openvino_int8_end_to_end',
        'tests/test_deploy_openvino.py::test_segmentation_in_openvino_default_precision'],
    r'\.venv/bin/python demo/onnx_inference\.py ': [
        'tests/test_onnx_inference_demo.py::test_demo_runs_without_mmdeploy_torch_or_mmdet'],
}

# mmrep's command lines whose argument parsers a quoted command must satisfy
TOOLS = ('train', 'test', 'deploy', 'convert_weights', 'benchmark', 'reparameterize',
         'convert_whole_model')


def quoted_commands():
    """(file, line, command, needs) of every command in a bash / shell / sh block."""
    found = []
    for rel in DOC_FILES:
        text = open(osp.join(REPO_ROOT, rel)).read()
        for block in re.finditer(r'^```(?:\{code-block\} )?(bash|shell|sh|console)\n(.*?)^```',
                                 text, re.S | re.M):
            first_line = text[:block.start(2)].count('\n') + 1
            needs = None
            lines = block.group(2).split('\n')
            i = 0
            while i < len(lines):
                line, number = lines[i], first_line + i
                while line.rstrip().endswith('\\') and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + ' ' + lines[i].strip()
                i += 1
                stripped = line.strip()
                marker = re.match(r'#\s*needs:\s*(.+)', stripped)
                if marker:
                    needs = marker.group(1)
                if not stripped or stripped.startswith('#'):
                    continue
                command = ' '.join(shlex.split(stripped, comments=True))
                found.append((rel, number, command, needs))
    return found


COMMANDS = quoted_commands()


def _ids():
    return [f'{rel}:{line}' for rel, line, _, _ in COMMANDS]


def test_the_docs_quote_commands():
    assert len(COMMANDS) > 20
    assert {rel for rel, *_ in COMMANDS} >= {'README.md', 'docs/en/get_started.md',
                                            'docs/en/user_guides/export.md'}


def _rule(command):
    matches = [rule for rule in RUN_BY if re.match(rule, command)]
    assert len(matches) <= 1, f'{command!r} matches several rules: {matches}'
    return matches[0] if matches else None


def _file_of(reference: str) -> str:
    """The source of the file a test ('tests/f.py::name') is in; fails if the test is gone."""
    path, _, name = reference.partition('::')
    source = open(osp.join(REPO_ROOT, path)).read()
    if name:
        names = {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
        assert name in names, f'{reference} does not exist'
    return source


@pytest.mark.parametrize('rel,line,command,needs', COMMANDS, ids=_ids())
def test_command_is_run_by_a_test_or_marked(rel, line, command, needs):
    rule = _rule(command)
    if rule is None:
        assert needs, (f'{rel}:{line}: {command!r} is run by no test (add a rule to RUN_BY) and '
                       'its block has no "# needs: ..." line saying what the tests lack')
        return
    sources = [_file_of(ref) for ref in RUN_BY[rule]]
    if RUN_BY[rule][0] == '.ci/run':
        assert re.search(r'^\s*' + re.escape(command) + r'\s*$', sources[0], re.M), (
            f'.ci/run does not run {command!r}')
    # the tests (their files: flags are often added by a helper) use every flag the docs quote
    for flag in re.findall(r'(?<!\S)(--[\w-]+)', command):
        assert any(flag in source for source in sources), (
            f'{rel}:{line}: {flag} of {command!r} is used by none of {RUN_BY[rule]}')


def _tool_module(name):
    spec = importlib.util.spec_from_file_location(f'_doc_tool_{name}',
                                                  osp.join(REPO_ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool_argv(command):
    """('deploy', [args]) for a command that runs one of mmrep's tools, else None."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        found = re.fullmatch(r'tools/(\w+)\.py', word)
        if found and found.group(1) in TOOLS and i > 0 and words[i - 1].endswith('python'):
            return found.group(1), words[i + 1:]
    return None


TOOL_COMMANDS = [c for c in COMMANDS if _tool_argv(c[2])]


def test_every_tool_has_a_quoted_command():
    assert {_tool_argv(c[2])[0] for c in TOOL_COMMANDS} == set(TOOLS)


@pytest.mark.parametrize('rel,line,command,needs', TOOL_COMMANDS,
                         ids=[f'{c[0]}:{c[1]}' for c in TOOL_COMMANDS])
def test_tool_command_parses_and_names_existing_configs(rel, line, command, needs, monkeypatch):
    tool, argv = _tool_argv(command)
    for word in argv:
        if word.startswith('configs/'):
            assert osp.isfile(osp.join(REPO_ROOT, word)), f'{rel}:{line}: {word} does not exist'
    module = _tool_module(tool)
    monkeypatch.setattr(sys, 'argv', [f'tools/{tool}.py'] + argv)
    try:
        if 'argv' in module.parse_args.__code__.co_varnames[:module.parse_args.__code__.co_argcount]:
            module.parse_args(argv)
        else:
            module.parse_args()
    except SystemExit as error:
        pytest.fail(f'{rel}:{line}: tools/{tool}.py rejects {argv} (exit {error.code})')
