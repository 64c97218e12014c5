"""docs/en/user_guides/own_project.md as code: its configs and commands, read out of the page.

The tests run what the page shows (tests/test_stock_tools.py with stock tools,
tests/test_config_scope.py on every shipped config), so the page cannot drift.
"""
import os.path as osp
import re

from conftest import REPO_ROOT

PAGE = osp.join(REPO_ROOT, 'docs', 'en', 'user_guides', 'own_project.md')
NUTS_CLASSES = ('date', 'fig', 'hazelnut')
CAMVID_CLASSES = 11
# what no downstream run may print: mmengine's fallback for an unknown scope, its
# fallback for a scope without registries, and the pkg_resources deprecation
FORBIDDEN_OUTPUT = ('Failed to search registry', 'will not be registered',
                    'pkg_resources is deprecated')


def page_text() -> str:
    with open(PAGE) as f:
        return f.read()


def page_blocks(language: str) -> list:
    return [m.group(1) for m in re.finditer(rf'^```{language}\n(.*?)^```', page_text(),
                                            re.S | re.M)]


def page_file(path: str) -> str:
    """The python block of the page that starts with the line ``# <path>``."""
    found = [b for b in page_blocks('python') if b.startswith(f'# {path}\n')]
    assert len(found) == 1, f'{PAGE} has {len(found)} blocks for {path}'
    return found[0]


def page_line(start: str) -> str:
    """The one line of the page's python blocks that starts with ``start``... and its comment above."""
    for block in page_blocks('python'):
        lines = block.splitlines()
        for comment, line in zip(lines, lines[1:]):
            if comment.startswith(start):
                return line
    raise AssertionError(f'{PAGE} has no python line under a comment {start!r}')


def page_commands(tool_dir_variable: str) -> tuple:
    """(the line that sets e.g. MMDET_TOOLS, the ``python $MMDET_TOOLS/...`` commands) of the page."""
    setter, commands = None, []
    for block in page_blocks('bash'):
        for line in re.sub(r'\\\n\s*', '', block).splitlines():
            if line.startswith(f'{tool_dir_variable}='):
                setter = line
            elif line.startswith(f'python ${tool_dir_variable}/'):
                commands.append(line.split('  #')[0].strip())
    assert setter and commands, f'{PAGE} sets no {tool_dir_variable} or runs no command with it'
    return setter, commands


def page_command(tool_dir_variable: str, pattern: str) -> str:
    setter, commands = page_commands(tool_dir_variable)
    found = [c for c in commands if re.search(pattern, c)]
    assert len(found) == 1, f'{PAGE}: {len(found)} commands match {pattern!r}: {commands}'
    return found[0]


def with_base(config_text: str, base: str) -> str:
    """A page config with its ``_base_`` line pointing at another mmrep config."""
    return re.sub(r"^_base_ = .*$", f"_base_ = 'mmrep::configs/{base}'", config_text,
                  count=1, flags=re.M)
