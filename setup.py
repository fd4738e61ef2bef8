import os.path as osp

from setuptools import find_packages, setup


def get_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmmod', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(fname):
    """Requirement lines of ``requirements/<fname>``, comments dropped."""
    path = osp.join(osp.dirname(__file__), 'requirements', fname)
    with open(path) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line]


setup(
    name='mmmod',
    version=get_version(),
    description='Dynamic-channel CNN backbones (CNN-MoD, Pick-or-Mix, channel gating, '
    'dynamic channel execution) for mmpretrain, mmsegmentation and mmdet',
    long_description=open('README.md').read() if osp.exists('README.md') else '',
    long_description_content_type='text/markdown',
    packages=find_packages(exclude=('configs', 'tools', 'tests')),
    include_package_data=True,
    # C++ sources of the operators compiled on first use (mmmod/ops)
    package_data={'mmmod': ['ops/csrc/*.cpp']},
    python_requires='>=3.9',
    install_requires=parse_requirements('torch.txt') + parse_requirements('mminstall.txt')
    + parse_requirements('runtime.txt'),
    extras_require=dict(tests=parse_requirements('tests.txt')),
    license='Apache License 2.0',
    zip_safe=False,
)
