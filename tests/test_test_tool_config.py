"""tools/test.py's config: --no-fuse and --memory-format find RepDeployHook however it is spelled."""
import os.path as osp

import pytest

import mmrep  # noqa: F401
from conftest import REPO_ROOT, load_tool
from mmrep.engine.rep_deploy_hook import RepDeployHook

CONFIG = osp.join(REPO_ROOT, 'configs', 'retinanet_repghost_shapes_demo.py')


class MyDeployHook(RepDeployHook):
    """A user's subclass, registered under its own name."""


class Built(Exception):
    """Raised in place of building the Runner: the test looks at the config it was given."""


def config_built_by_the_tool(argv, monkeypatch, cfg_hook=None):
    tool = load_tool('test')
    if cfg_hook is not None:
        load_config = tool.cli.load_config
        monkeypatch.setattr(tool.cli, 'load_config', lambda args: cfg_hook(load_config(args)))

    def from_cfg(cfg):
        raise Built(cfg)

    monkeypatch.setattr(tool.Runner, 'from_cfg', from_cfg)
    monkeypatch.setattr('sys.argv', ['tools/test.py'] + argv)
    with pytest.raises(Built) as built:
        tool.main()
    return built.value.args[0]


@pytest.mark.parametrize('spelling', ['RepDeployHook', 'mmdet.RepDeployHook', 'mmseg.RepDeployHook',
                                      'class', 'subclass'])
def test_no_fuse_drops_the_deploy_hook_however_spelled(spelling, tmp_path, monkeypatch):
    """Item 16: with 'mmdet.RepDeployHook' or the class, --no-fuse used to keep the hook,
    and the 'unfused' test ran fused."""
    from mmdet.registry import HOOKS
    HOOKS.register_module(module=MyDeployHook, force=True)  # in mmdet's registry only
    hook_type = {'class': 'RepDeployHook', 'subclass': 'MyDeployHook'}.get(spelling, spelling)
    config = tmp_path / 'cfg.py'
    config.write_text(f"_base_ = '{CONFIG}'\n"
                      f"custom_hooks = [dict(type='EMAHook'), dict(type='{hook_type}')]\n")

    def as_class(cfg):  # a pure-Python config names the class itself
        if spelling == 'class':
            cfg.custom_hooks[1]['type'] = RepDeployHook
        return cfg

    argv = [str(config), 'model.pth', '--work-dir', str(tmp_path / 'w')]
    fused = config_built_by_the_tool(argv, monkeypatch, as_class)
    assert len(fused.custom_hooks) == 2 and fused.custom_hooks[0]['type'] == 'EMAHook'
    assert fused.custom_hooks[1]['memory_format'] == 'auto'  # the fast path reaches the hook
    unfused = config_built_by_the_tool(argv + ['--no-fuse'], monkeypatch, as_class)
    assert [h['type'] for h in unfused.custom_hooks] == ['EMAHook']
