"""The documentation site: it builds as `make docs` builds it, and its pages render in a browser.

The build runs Sphinx with warnings as errors and nitpicky references, as
`make docs` does (or, when MMREP_DOCS_HTML names a site `make docs` just
built, as .ci/run does, that site is read). The pages are opened in headless
Chromium, served from 127.0.0.1: the model zoo must show a row per registered
family, the benchmark plot must load, the design page's math must render.
Without Chromium the browser test skips, saying so, except under CI=true.
"""
import html
import json
import os
import os.path as osp
import re
import shutil
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import REPO_ROOT

DOCS_SRC = osp.join(REPO_ROOT, 'docs', 'en')
IN_CI = os.environ.get('CI') == 'true'

# The page tree every helper writes into (TEAM.md, "Documentation").
PAGES = ['get_started', 'model_zoo', 'user_guides/train', 'user_guides/pretrained_weights',
         'user_guides/fuse_and_deploy_hook', 'user_guides/export', 'user_guides/int8',
         'user_guides/openvino', 'user_guides/benchmark', 'user_guides/own_project',
         'user_guides/safe_loading', 'design', 'api', 'changelog']


def _sphinx_build(src: str, out: str, conf_dir: str = DOCS_SRC) -> subprocess.CompletedProcess:
    """`make docs`'s Sphinx command, with another source or output folder."""
    pytest.importorskip('sphinx', reason='Sphinx is not installed (requirements.txt lists it)')
    cmd = [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-n', '-E', '-a', '-q',
           '-b', 'html', '-c', conf_dir, '-d', osp.join(out, 'doctrees'), src, osp.join(out, 'html')]
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=900)


def test_makefile_builds_the_docs_as_this_test_does():
    makefile = open(osp.join(REPO_ROOT, 'Makefile')).read()
    recipe = re.search(r'^docs:.*\n\t(.+)$', makefile, re.M)
    assert recipe, 'the Makefile has no docs target'
    for flag in ('-W', '--keep-going', '-n', 'docs/en', 'docs/_build/html'):
        assert flag in recipe.group(1).split(), f'make docs runs without {flag}: {recipe.group(1)}'


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> str:
    """The built site: MMREP_DOCS_HTML (what `make docs` built), else a fresh build here."""
    prebuilt = os.environ.get('MMREP_DOCS_HTML')
    if prebuilt:
        assert osp.isfile(osp.join(prebuilt, 'index.html')), f'MMREP_DOCS_HTML={prebuilt} holds no site'
        return prebuilt
    out = str(tmp_path_factory.mktemp('docs'))
    result = _sphinx_build(DOCS_SRC, out)
    assert result.returncode == 0, f'the docs do not build cleanly:\n{result.stderr[-6000:]}'
    return osp.join(out, 'html')


def test_every_page_of_the_tree_is_built(site):
    for page in ['index'] + PAGES:
        assert osp.isfile(osp.join(site, page + '.html')), f'{page} was not built'


def test_measured_pages_link_the_files_their_figures_come_from(site):
    page = open(osp.join(site, 'user_guides', 'benchmark.html')).read()
    for name in ('benchmark.json', 'command.txt', 'orepa_training_cost.json'):
        link = re.search(r'href="([^"]*_downloads/[^"]*/%s)"' % re.escape(name), page)
        assert link, f'the benchmark page does not link {name}'
        target = osp.normpath(osp.join(site, 'user_guides', link.group(1)))
        assert osp.isfile(target), f'{name} is linked but not in the site'


def test_an_unresolved_mmrep_reference_fails_the_build(tmp_path):
    """Nitpicky for mmrep: a wrong name and an ambiguous short name stop the build, a right one not."""
    src = tmp_path / 'src'
    src.mkdir()
    (src / 'index.md').write_text(
        '# References\n\n'
        '{func}`mmrep.fusion.no_such_formula`, {meth}`reparameterize` (two blocks below have one)'
        ' and {func}`~mmrep.fusion.fold_bn`\n\n'
        '```{eval-rst}\n.. automodule:: mmrep.fusion\n.. automodule:: mmrep.blocks.repvgg\n'
        '.. automodule:: mmrep.blocks.repghost\n```\n')
    result = _sphinx_build(str(src), str(tmp_path / 'out'))
    assert result.returncode != 0
    assert 'reference target not found: mmrep.fusion.no_such_formula' in result.stderr
    assert 'reference target not found: reparameterize' in result.stderr
    assert 'not found: mmrep.fusion.fold_bn ' not in result.stderr


def test_every_mmrep_module_is_in_the_api_reference():
    """A new module gets its autodoc entry (mmrep.fusion's is on the design page)."""
    import pkgutil

    import mmrep
    modules = {'mmrep'} | {m.name for m in pkgutil.walk_packages(mmrep.__path__, 'mmrep.')}
    documented = set()
    for page in ('api.md', 'design.md'):
        text = open(osp.join(DOCS_SRC, page)).read()
        documented |= set(re.findall(r'^\.\. automodule:: (\S+)', text, re.M))
    # packages whose __init__ is empty have nothing to show beyond their modules
    empty = {m for m in modules if m != 'mmrep' and _is_empty_package(m)}
    version_only = {'mmrep.version'}  # __version__, shown in the site's title
    missing = sorted(modules - documented - empty - version_only)
    assert not missing, f'not in docs/en/api.md: {missing}'


def _is_empty_package(name: str) -> bool:
    import importlib.util
    spec = importlib.util.find_spec(name)
    return (spec.submodule_search_locations is not None
            and not open(spec.origin).read().strip())


def _conf():
    namespace = {'__file__': osp.join(DOCS_SRC, 'conf.py')}
    with open(namespace['__file__']) as f:
        exec(compile(f.read(), namespace['__file__'], 'exec'), namespace)
    return namespace


def test_ignored_references_never_cover_an_mmrep_name():
    """nitpick_ignore_regex is for other packages: no mmrep name, full or short, may match it."""
    import mmrep.registry  # noqa: F401  (imports every model, block and hook module)
    patterns = _conf()['nitpick_ignore_regex']
    names = set()
    for module_name, module in list(sys.modules.items()):
        if module_name == 'mmrep' or module_name.startswith('mmrep.'):
            names.add(module_name)
            for attr, value in vars(module).items():
                if not attr.startswith('_') and getattr(value, '__module__', None) == module_name:
                    names.update({f'{module_name}.{attr}', attr})
    assert len(names) > 100
    for kind, target in patterns:
        for role in ('py:class', 'py:func', 'py:meth', 'py:mod', 'py:data'):
            if re.fullmatch(kind, role):
                covered = sorted(n for n in names if re.fullmatch(target, n))
                assert not covered, f'nitpick_ignore_regex {target!r} hides mmrep names: {covered[:5]}'


# --- in a browser ----------------------------------------------------------------------------

def _chromium() -> str:
    for name in ('chromium', 'chromium-browser', 'google-chrome'):
        path = shutil.which(name)
        if path:
            return path
    if IN_CI:
        pytest.fail('CI=true but no Chromium is installed (.ci/run installs the Debian package chromium)')
    pytest.skip('no headless browser here: install the Debian package chromium '
                '(apt-get install -y chromium) to open the built pages')


# Loads each page in a same-origin iframe, then reports what rendered into #result.
PROBE = '''<!doctype html><html><body><pre id="result">pending</pre><script>
const pages = %s;
function report(page, win) {
  const doc = win.document;
  const sections = {};
  for (const section of doc.querySelectorAll('section[id]')) {
    const table = section.querySelector('table');
    if (!table) continue;
    sections[section.id] = Array.from(table.querySelectorAll('tbody tr'))
      .map(row => row.cells[0].textContent.trim());
  }
  return {
    page: page, title: doc.title,
    links: Array.from(doc.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
    images: Array.from(doc.images).map(img => ({src: img.getAttribute('src'), id: img.id,
      complete: img.complete, naturalWidth: img.naturalWidth})),
    tables: sections,
    math: doc.querySelectorAll('mjx-container').length,
    mathErrors: doc.querySelectorAll('mjx-merror').length,
  };
}
Promise.all(pages.map(page => new Promise(resolve => {
  const frame = document.createElement('iframe');
  frame.style.width = '1200px'; frame.style.height = '900px';
  frame.onload = async () => {
    const win = frame.contentWindow;
    if (win.MathJax && win.MathJax.startup) { await win.MathJax.startup.promise; }
    resolve(report(page, win));
  };
  frame.src = page;
  document.body.appendChild(frame);
}))).then(results => {
  document.getElementById('result').textContent = JSON.stringify(results);
});
</script></body></html>'''


@pytest.fixture(scope='module')
def rendered(site, tmp_path_factory):
    """What headless Chromium rendered of the index, model zoo, benchmark and design pages."""
    browser = _chromium()
    root = tmp_path_factory.mktemp('served')
    served = root / 'site'
    shutil.copytree(site, served)
    pages = ['index.html', 'model_zoo.html', 'user_guides/benchmark.html', 'design.html']
    (served / '_probe.html').write_text(PROBE % json.dumps(pages))
    handler = partial(_QuietHandler, directory=str(served))
    server = ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cmd = [browser, '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
               '--disable-background-networking', '--disable-component-update', '--disable-sync',
               f'--user-data-dir={root / "profile"}', '--virtual-time-budget=30000', '--dump-dom',
               f'http://127.0.0.1:{server.server_address[1]}/_probe.html']
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    finally:
        server.shutdown()
        server.server_close()
    found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout, re.S)
    assert found and found.group(1) != 'pending', (
        f'the pages did not finish rendering (exit {result.returncode}):\n{result.stderr[-3000:]}')
    return {r['page']: r for r in json.loads(html.unescape(found.group(1)))}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002  (the base class's name)
        pass


def test_index_renders_with_a_link_to_every_page(rendered):
    index = rendered['index.html']
    assert 'mmrep' in index['title']
    for page in PAGES:
        assert page + '.html' in index['links'], f'the index does not link {page}'


def test_model_zoo_table_has_a_row_per_registered_family(rendered):
    from mmrep.registry import MODEL_CLASSES
    rows = rendered['model_zoo.html']['tables'].get('families')
    assert rows, 'the model zoo has no table in its "Families" section'
    for cls in MODEL_CLASSES:
        assert rows.count(cls.__name__) == 1, f'{cls.__name__}: {rows.count(cls.__name__)} rows in {rows}'


def test_benchmark_plot_loads(rendered):
    images = rendered['user_guides/benchmark.html']['images']
    plot = [img for img in images if img['id'] == 'benchmark-plot']
    assert plot, f'no benchmark plot on the page: {images}'
    for img in images:
        assert img['complete'] and img['naturalWidth'] > 0, f'image did not load: {img}'


def test_design_page_renders_its_math_offline(rendered):
    design = rendered['design.html']
    assert design['math'] > 20, f'only {design["math"]} formulas rendered'
    assert design['mathErrors'] == 0
