"""The notebooks with an explorer, as a user meets them: in JupyterLab, in a real browser.

One JupyterLab server from this environment (``python -m jupyter lab``, a random token, a free port on
127.0.0.1) and one headless Chromium driven by Selenium serve all three notebooks.  Each notebook is a copy of
the workbook's with ``scale = "tiny"`` (papermill's parameterization, as ``tests/test_workbook.py`` does) and
its run folder in a temporary folder; ``SBT_HEADLESS`` is unset, so the explorers are live widgets.  Per
notebook: open it, Run All Cells, wait until every code cell has run and the kernel is idle, then check the
page: no traceback, the explorer's controls are rendered widgets, and moving one control changes its image.
On a failure the message names a screenshot of the page.

Needs Chromium, chromedriver and the ``selenium`` package; without them the tests are skipped, except where
``$CI`` is set (CI installs them: ``.ci/run``), where they fail.  Select or leave out with ``-m browser`` /
``-m "not browser"``.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
RUN_TIMEOUT = float(os.environ.get("SBT_BROWSER_TIMEOUT", 240))  # s for Run All Cells of one notebook at tiny
STEP_TIMEOUT = 120  # s for the server, the page, a kernel to start, a widget to render or an image to change

pytestmark = pytest.mark.browser

# notebook → the call that builds its explorer (to find the cell), the least number of each kind of control,
# and the controls moved, one after the other: ("slider", index, key) or ("dropdown", label, option index).
EXPLORERS = {
    "01_decomposition": ("group_explorer(", {".widget-slider": 3}, [("slider", 0, "ARROW_LEFT")]),
    "03_ot_alignment": ("epsilon_explorer(", {".widget-slider": 1}, [("slider", 0, "ARROW_LEFT")]),
    "05_generation": ("generation_explorer(", {".widget-slider": 2, ".widget-dropdown": 2},
                      [("dropdown", "class", 1), ("slider", 0, "ARROW_LEFT")]),
}

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _browser() -> tuple[str, str]:
    """Chromium and chromedriver; skips the tests where they (or selenium) are missing, fails under $CI."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium")
    chrome = next((shutil.which(name) for name in BROWSERS if shutil.which(name)), None)
    driver = shutil.which("chromedriver")
    missing += [] if chrome else ["chromium"]
    missing += [] if driver else ["chromedriver"]
    if missing:
        reason = (f"browser test: no {', '.join(missing)}. It needs the Debian packages `chromium chromium-driver` "
                  "(apt-get install chromium chromium-driver) and the pip package `selenium` (pip install -e '.[dev]')")
        if os.environ.get("CI"):
            pytest.fail(reason + "; $CI is set, so it fails instead of skipping", pytrace=False)
        pytest.skip(reason)
    return chrome, driver


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


# JavaScript run in the page: ``window.jupyterapp`` is JupyterLab's application object, exposed by
# ``--LabApp.expose_app_in_browser`` (JupyterLab's own flag, made for browser tests).
PANEL = ("const app = window.jupyterapp;"
         "const p = Array.from(app.shell.widgets('main')).find(w => w.id === arguments[0]);")

STATE = PANEL + """
const cells = p.content.widgets.filter(c => c.model.type === 'code');
const kernel = p.sessionContext.session && p.sessionContext.session.kernel;
const errors = [];
cells.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {
  if (o.output_type === 'error') errors.push(`code cell ${i + 1}: ${o.ename}: ${o.evalue}`);
}));
return {status: kernel ? kernel.status : null, ready: p.context.isReady && p.sessionContext.isReady,
        cells: cells.length, executed: cells.filter(c => c.model.executionCount !== null).length,
        errors: errors, run: window.__sbtRunAll === undefined ? null : window.__sbtRunAll};
"""

HASH_IMAGES = """
return Array.from(arguments[0].querySelectorAll('.widget-output img')).map(img => {
  let h = 2166136261;  // FNV-1a of the data URI: a short fingerprint of each image
  for (let i = 0; i < img.src.length; i++) { h ^= img.src.charCodeAt(i); h = Math.imul(h, 16777619); }
  return img.src.length + ':' + (h >>> 0).toString(16);
});
"""


@dataclass
class Lab:
    driver: object
    url: str
    root: Path
    runs: Path
    log: Path

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, what: str, check, timeout: float = STEP_TIMEOUT, every: float = 1.0):
        """Poll ``check()`` until it returns something true; AssertionError naming ``what`` after ``timeout``."""
        end = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > end:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(every)

    def screenshot(self, path: Path) -> Path:
        try:
            self.driver.save_screenshot(str(path))
        except Exception as e:  # the browser may be gone; the message still says what failed
            return Path(f"(no screenshot: {e})")
        return path

    def console(self) -> str:
        try:
            return "\n".join(e["message"][:300] for e in self.driver.get_log("browser")[-8:])
        except Exception:
            return ""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """One JupyterLab server and one headless Chromium, shared by the notebooks; both ended at the end."""
    chrome, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    base = tmp_path_factory.mktemp("browser")
    root, runs, settings = base / "notebooks", base / "runs", base / "lab-settings"
    for folder in (root, runs, settings / "@jupyterlab" / "apputils-extension", base / "runtime", base / "chrome"):
        folder.mkdir(parents=True)
    # no news / update toasts over the notebook
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
    token, port = secrets.token_hex(16), _free_port()
    env = {k: v for k, v in os.environ.items() if k != "SBT_HEADLESS"}  # live kernels: explorers are widgets
    env.update(SBT_CACHE=str(base / "cache"),  # trained 2D VAEs, feature caches (as tests/test_workbook.py)
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), JUPYTER_CONFIG_DIR=str(base / "config"))  # not ~/.jupyter
    log = base / "jupyterlab.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--ServerApp.terminals_enabled=False",
             "--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={settings}",
             f"--LabApp.workspaces_dir={base / 'workspaces'}"],
            cwd=base, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    driver = None

    def shut_down():
        if driver is not None:
            try:
                driver.quit()
            except Exception:
                pass
        try:  # the server shuts its kernels down; then its process group goes, whatever is left of it
            request = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                             headers={"Authorization": f"token {token}"})
            urllib.request.urlopen(request, timeout=10).close()
            server.wait(timeout=30)
        except Exception:
            pass
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass

    try:
        def up():
            if server.poll() is not None:
                raise AssertionError(f"JupyterLab exited with {server.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(urllib.request.Request(
                        f"{url}/api/status", headers={"Authorization": f"token {token}"}), timeout=5) as r:
                    return r.status == 200
            except OSError:
                return False

        end = time.monotonic() + STEP_TIMEOUT
        while not up():
            assert time.monotonic() < end, f"JupyterLab did not answer on {url} in {STEP_TIMEOUT} s:\n{_tail(log)}"
            time.sleep(0.5)

        options = Options()
        options.binary_location = chrome
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run",
                    "--disable-extensions", "--window-size=1400,1000", f"--user-data-dir={base / 'chrome'}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
        driver = webdriver.Chrome(service=Service(chromedriver), options=options)  # no Selenium Manager download
        driver.set_script_timeout(STEP_TIMEOUT)
        session = Lab(driver, url, root, runs, log)
        driver.get(f"{url}/lab?token={token}")
        session.wait("JupyterLab to load (window.jupyterapp)",
                     lambda: session.js("return !!(window.jupyterapp && window.jupyterapp.shell)"), every=0.5)
        driver.execute_async_script("window.jupyterapp.restored.then(() => arguments[arguments.length - 1](true))")
    except BaseException:
        shut_down()
        raise
    yield session
    shut_down()


def tiny_copy(lab: Lab, notebook: str) -> str:
    """The workbook's notebook with ``scale = "tiny"`` and its run folder under the test's temporary folder,
    written into the server's root; its path there."""
    nb = parameterize_notebook(load_notebook_node(str(NOTEBOOK_DIR / f"{notebook}.ipynb")),
                               {"scale": "tiny", "out_dir": str(lab.runs / notebook)})
    nbformat.write(nb, lab.root / f"{notebook}.ipynb")
    return f"{notebook}.ipynb"


def move(lab: Lab, explorer, control: tuple) -> str:
    """Move one control of the explorer as a user does; a description of the move."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    kind, which, how = control
    if kind == "dropdown":
        box = next((d for d in explorer.find_elements(By.CSS_SELECTOR, ".widget-dropdown")
                    if d.find_element(By.CSS_SELECTOR, "label").get_attribute("textContent").strip() == which), None)
        assert box is not None, f"no dropdown labelled {which!r} in the explorer"
        select = Select(box.find_element(By.TAG_NAME, "select"))
        lab.js("arguments[0].scrollIntoView({block: 'center'})", box)
        select.select_by_index(how)
        return f"dropdown {which!r} → {select.first_selected_option.text!r}"
    slider = explorer.find_elements(By.CSS_SELECTOR, ".widget-slider")[which]
    handle = slider.find_element(By.CSS_SELECTOR, ".noUi-handle")
    readout = slider.find_element(By.CSS_SELECTOR, ".widget-readout")
    before = readout.get_attribute("textContent")
    lab.js("arguments[0].scrollIntoView({block: 'center'})", handle)
    try:
        ActionChains(lab.driver).move_to_element(handle).click().perform()  # focus the handle as a user does
    except Exception:  # something drawn over it: focus it directly, the keys are what moves it
        lab.js("arguments[0].focus()", handle)
    handle.send_keys(getattr(Keys, how))
    lab.wait(f"slider {which}'s readout to change from {before!r} after {how}",
             lambda: readout.get_attribute("textContent") != before, timeout=10, every=0.2)
    return f"slider {which} ({before} → {readout.get_attribute('textContent')}) by {how}"


@pytest.mark.parametrize("notebook", list(EXPLORERS))
def test_explorer_in_jupyterlab(lab, notebook, tmp_path):
    call, least, moves = EXPLORERS[notebook]
    path = tiny_copy(lab, notebook)
    panel = None
    try:
        panel = lab.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "window.jupyterapp.commands.execute('docmanager:open', {path: arguments[0], factory: 'Notebook'})"
            ".then(w => done(w ? w.id : 'error: no notebook widget'), e => done('error: ' + e));", path)
        assert panel and not panel.startswith("error"), f"could not open {path}: {panel}"
        lab.wait(f"{path}'s kernel to start",
                 lambda: (s := lab.js(STATE, panel)) and s["ready"] and s["status"] == "idle")

        # Run All Cells: JupyterLab's own command on this notebook (what the Run menu does)
        lab.js(PANEL + "window.__sbtRunAll = undefined;"
               "app.commands.execute('notebook:run-all-cells', {widgetId: p.id})"
               ".then(r => { window.__sbtRunAll = String(r); }, e => { window.__sbtRunAll = 'error: ' + e; });",
               panel)

        def finished():
            s = lab.js(STATE, panel)
            assert not s["errors"], f"{path} raised: " + "; ".join(s["errors"])
            assert s["run"] in (None, "true"), f"Run All Cells ended with {s['run']} ({s['executed']}/{s['cells']} ran)"
            return s["run"] == "true" and s["executed"] == s["cells"] and s["status"] == "idle"

        lab.wait(f"Run All Cells of {path} (every code cell run, kernel idle)", finished, RUN_TIMEOUT, every=2)

        # (a) no traceback anywhere in the page's notebook
        tracebacks = lab.js(PANEL + "return Array.from(p.node.querySelectorAll("
                            "'.jp-OutputArea-output[data-mime-type=\"application/vnd.jupyter.stderr\"]'))"
                            ".map(e => e.textContent).filter(t => t.includes('Traceback')).map(t => t.slice(0, 800));",
                            panel)
        assert not tracebacks, f"{path} shows a traceback:\n" + "\n---\n".join(tracebacks)

        # (b) the explorer's controls are rendered widgets, with its first image
        explorer = lab.js(PANEL + "const c = p.content.widgets.find(c => c.model.type === 'code' &&"
                          " c.model.sharedModel.getSource().includes(arguments[1]));"
                          "if (!c) return null; c.node.scrollIntoView({block: 'start'}); return c.outputArea.node;",
                          panel, call)
        assert explorer is not None, f"no cell of {path} calls {call}"

        def rendered():
            text = explorer.get_attribute("textContent")
            assert "Error displaying widget" not in text, f"the explorer did not render: {text[:500]}"
            counts = {sel: lab.js("return arguments[0].querySelectorAll(arguments[1]).length", explorer, sel)
                      for sel in (".jupyter-widgets", *least)}
            return counts[".jupyter-widgets"] and all(counts[s] >= n for s, n in least.items()) and \
                lab.js(HASH_IMAGES, explorer)

        lab.wait(f"{call}...)'s widgets ({least}) and its image", rendered)
        assert "Error displaying widget" not in lab.js(PANEL + "return p.node.textContent;", panel)

        # (c) moving a control redraws the explorer's image
        for control in moves:
            before = lab.js(HASH_IMAGES, explorer)
            done = move(lab, explorer, control)
            lab.wait(f"the explorer's image to change after moving {done} (its output: "
                     f"{explorer.get_attribute('textContent')[:300]!r})",
                     lambda: (now := lab.js(HASH_IMAGES, explorer)) and now != before)
        assert not lab.js(STATE, panel)["errors"]
    except Exception as e:
        shot = lab.screenshot(tmp_path / f"{notebook}.png")
        try:  # the notebook as the page has it, outputs included, beside the screenshot
            lab.driver.execute_async_script(
                PANEL + "p.context.save().then(() => arguments[arguments.length - 1](true),"
                " () => arguments[arguments.length - 1](false));", panel)
        except Exception:
            pass
        pytest.fail(f"{notebook} in JupyterLab: {type(e).__name__}: {e}\nscreenshot: {shot}\n"
                    f"the notebook (saved as the page had it): {lab.root / path}\nserver log: {lab.log}\n"
                    f"browser console:\n{lab.console()}", pytrace=False)
    finally:
        if panel and not str(panel).startswith("error"):
            try:  # free the kernel before the next notebook; no "save changes?" dialog
                lab.driver.execute_async_script(
                    PANEL + "const done = arguments[arguments.length - 1];"
                    "if (!p) { done(false); return; }"
                    "p.sessionContext.shutdown().catch(() => {}).then(() => {"
                    " p.context.model.dirty = false; p.dispose(); done(true); });", panel)
            except Exception:
                pass
