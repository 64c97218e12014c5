import os.path as osp

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

version = {}
with open('mmrep/version.py') as f:
    exec(f.read(), version)

# Runs _mmrep_startup_hook at every Python start, so stock OpenMMLab tools read
# `_base_ = 'mmrep::configs/...'` without `import mmrep` (see that module).
# The name sorts after setuptools' `__editable__.*.pth`, whose finder must be
# in place before an editable install can import the hook. The line does nothing
# when the hook cannot be found (an editable install whose checkout moved), instead
# of making every Python start in the environment print a traceback.
STARTUP_PTH = 'mmrep-config-scope.pth'
STARTUP_LINE = ("import importlib.util; importlib.util.find_spec('_mmrep_startup_hook') "
                "and __import__('_mmrep_startup_hook').install()\n")


class BuildPyWithStartupHook(build_py):
    """build_py that also writes STARTUP_PTH to the root of site-packages.

    A wheel installs the root of build_lib there. An editable wheel (PEP 660,
    setuptools>=64) is made from the directory that setuptools' editable_wheel
    sets as the `install` command's install_lib, so in editable mode the file
    goes there.
    """

    def _pth_path(self) -> str:
        if getattr(self, 'editable_mode', False):
            return osp.join(self.get_finalized_command('install').install_lib, STARTUP_PTH)
        return osp.join(self.build_lib, STARTUP_PTH)

    def run(self):
        super().run()
        path = self._pth_path()
        self.mkpath(osp.dirname(path))
        with open(path, 'w') as f:
            f.write(STARTUP_LINE)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if not getattr(self, 'editable_mode', False):
            outputs.append(self._pth_path())
        return outputs


setup(
    name='mmrep',
    version=version['__version__'],
    description='Structural re-parameterization backbones, necks and deploy tools '
    'for OpenMMLab detection and segmentation',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmrep', 'mmrep.*']),
    py_modules=['_mmrep_startup_hook'],
    # mmrep/.mim/configs/configs links to configs/: a wheel gets copies, so that
    # `mmrep::configs/<name>.py` bases resolve (mmengine looks in <package>/.mim/configs)
    package_data={'mmrep': ['.mim/model-index.yml', '.mim/configs/configs/*.py',
                            '.mim/configs/configs/*/*.py', '.mim/configs/configs/*/*/*.py']},
    cmdclass={'build_py': BuildPyWithStartupHook},
    python_requires='>=3.11,<3.12',
    install_requires=[
        'torch==2.14.1',
        'torchvision==0.29.1',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmdet==3.3.0',
        'mmsegmentation==1.2.2',
        'pycocotools',
        'huggingface_hub>=0.24',  # weights by name (timm://): its errors module, endpoint=
        'safetensors',
        'ftfy',
        'regex',
    ],
    extras_require={
        'deploy': ['mmdeploy==1.3.1', 'onnx==1.17.0', 'onnxruntime==1.26.*', 'protobuf==3.20.2',
                   'ml_dtypes', 'openvino==2026.4.1', 'nncf==3.4.0'],
        'benchmark': ['matplotlib', 'ml_dtypes'],
        'tests': ['pytest', 'hypothesis', 'timm==1.0.31', 'mmpretrain==1.2.0'],
        'docs': ['sphinx==9.0.4', 'myst-parser==5.2.0', 'furo==2025.12.19',
                 'sphinx-mathjax-offline==0.0.2'],
    },
    license='Apache-2.0',
    zip_safe=False,
)
