from setuptools import find_packages, setup

version = {}
with open('mmrep/version.py') as f:
    exec(f.read(), version)

setup(
    name='mmrep',
    version=version['__version__'],
    description='Structural re-parameterization backbones, necks and deploy tools '
    'for OpenMMLab detection and segmentation',
    long_description=open('README.md').read() if __import__('os').path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmrep', 'mmrep.*']),
    python_requires='>=3.11,<3.12',
    install_requires=[
        'torch==2.14.1',
        'torchvision==0.29.1',
        'mmengine==0.10.7',
        'mmcv==2.1.0',
        'mmdet==3.3.0',
        'mmsegmentation==1.2.2',
        'pycocotools',
        'ftfy',
        'regex',
    ],
    extras_require={
        'deploy': ['mmdeploy==1.3.1', 'onnx==1.17.0', 'onnxruntime==1.26.*', 'protobuf==3.20.2'],
        'benchmark': ['matplotlib', 'ml_dtypes'],
        'tests': ['pytest', 'hypothesis', 'timm==1.0.31'],
    },
    license='Apache-2.0',
    zip_safe=False,
)
