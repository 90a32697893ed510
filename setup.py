"""Package metadata comes from settings.ini (nbdev's convention); pinned versions from constraints.txt."""
from configparser import ConfigParser
import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read('settings.ini', encoding='utf-8')
cfg = cfg['DEFAULT']
for k in ('version', 'description', 'repo', 'user', 'author', 'author_email', 'license', 'min_python'):
    if k not in cfg: raise KeyError(f"settings.ini: missing key {k!r}")

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
req = lambda key: cfg.get(key, '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=lic[0],
    url=cfg['git_url'],
    keywords=cfg.get('keywords', '').split(),
    classifiers=[f"Development Status :: {statuses[int(cfg['status'])]}",
                 f"Intended Audience :: {cfg['audience'].title()}",
                 f"Natural Language :: {cfg['language'].title()}",
                 f"Programming Language :: Python :: {cfg['min_python']}"]
                + ([f'License :: {lic[1]}'] if lic[1] else []),
    packages=setuptools.find_packages(include=['magicid', 'magicid.*']),
    include_package_data=True,
    python_requires=f">={cfg['min_python']}",
    install_requires=req('requirements'),
    extras_require={'dev': req('dev_requirements'), 'gpu': req('gpu_requirements')},
    entry_points={'console_scripts': req('console_scripts'), 'nbdev': [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"]},
    zip_safe=False,
)
