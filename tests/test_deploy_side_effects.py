"""Importing mmrep.deploy helpers changes nothing in the process (issue 16, item 20);
the mmdeploy-facing entry, mmrep.deploy.mmdeploy_setup, does all the changes."""
import os.path as osp
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip('mmdeploy')

from conftest import REPO_ROOT  # noqa: E402

# prints what an import changed: the torch exporter, mmdeploy's BaseTask, the rewriter registry
PROBE = textwrap.dedent('''
    import json, sys
    import torch
    import torch.onnx.symbolic_opset9 as opset9
    from mmdeploy.codebase.base.task import BaseTask
    from mmdeploy.core import FUNCTION_REWRITER
    def state():
        records = FUNCTION_REWRITER._registry._rewrite_records
        return dict(
            export_patched=getattr(torch.onnx.export, '_mmrep_torchscript_default', False),
            cast_long=hasattr(opset9, '_cast_Long'),
            task_wrapped=getattr(BaseTask.build_pytorch_model, 'fuses_mmrep_blocks', False),
            rewriters=sorted(r['_object'].__name__ for rs in records.values() for r in rs
                             if r['_object'].__module__.startswith('mmrep')))
    states = [state()]
    for statement in sys.argv[1:]:
        exec(statement)
        states.append(state())
    print(json.dumps(states))
''')


def _states(*statements: str) -> list:
    """The process state before and after each statement, run in order in a fresh Python."""
    import json
    out = subprocess.run([sys.executable, '-c', PROBE, *statements], cwd=REPO_ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


HELPER_IMPORTS = [
    'from mmrep.deploy.quantize import cpu_session',
    'import mmrep.deploy',
    'from mmrep.deploy.rewriters import exact_adaptive_avg_pool2d',
    'from mmrep.deploy.openvino import compile_onnx',
    'from mmrep.deploy import export_and_verify, fuse_in_mmdeploy_tasks',
]


def test_importing_a_helper_changes_nothing():
    states = _states(*HELPER_IMPORTS)
    for statement, state in zip(HELPER_IMPORTS, states[1:]):
        assert state == states[0], statement
    assert states[-1]['task_wrapped'] is False and states[-1]['rewriters'] == []
    assert states[-1]['export_patched'] is False


def test_mmdeploy_entry_applies_every_change():
    # a second and third call change nothing more (no double wrapping, no second registration)
    _, after, again = _states('import mmrep.deploy.mmdeploy_setup as s',
                              's.setup_mmdeploy(); s.setup_mmdeploy()')
    assert after['export_patched'] is True and after['cast_long'] is True
    assert after['task_wrapped'] is True
    assert after['rewriters'] == ['adaptive_avg_pool2d__onnxruntime_exact']
    assert again == after


def test_deploy_configs_name_the_entry():
    from mmengine.config import Config
    for name in ('detection_onnxruntime_static.py', 'detection_onnxruntime_dynamic.py',
                 'instance-seg_onnxruntime_static.py', 'segmentation_onnxruntime_static.py'):
        cfg = Config.fromfile(osp.join(REPO_ROOT, 'configs', 'deploy', name))
        assert cfg.codebase_config.module == ['mmrep.deploy.mmdeploy_setup'], name
