"""The lab in a real JupyterLab, driven from headless Chromium through its UI: open a notebook, Run All, and use the
widgets the way a reader does (pick another image, another CAM label, another gate label) until the figure changes.

Skipped unless Chromium, chromedriver and selenium are installed (`.ci/run` installs them: apt `chromium
chromium-driver`, pip `selenium`). A notebook gets tiny parameters the way papermill gives them: `papermill
--prepare-only` writes a copy with an injected-parameters cell and runs nothing, and the browser opens that copy.
Screenshots of a failure go to the test's temporary folder.

Run as a script to take the README's screenshot of the explorer with the notebook's default parameters::

    python -m tests.test_lab --screenshot docs/explorer.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO / "notebooks"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")
TINY_MODEL = {"backbone": "test_efficientnet", "pretrained": False, "image_size": 32, "batch_size": 16}

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _missing() -> str:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed"
    if CHROMIUM is None or CHROMEDRIVER is None:
        return "chromium and chromedriver are not installed"
    return ""


# ---------------------------------------------------------------------------------------------------------------------
# A JupyterLab server and a browser
# ---------------------------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(root: Path, state: Path, *, timeout: float = 60.0) -> Iterator[str]:
    """JupyterLab serving `root` on a free port with a token, its settings and runtime files under `state`, the
    kernels with matplotlib's inline backend (as `make lab`); yields the base URL with the token."""
    port, token = _free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
               f"--LabApp.user_settings_dir={state / 'settings'}", f"--LabApp.workspaces_dir={state / 'workspaces'}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    quiet = state / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    quiet.parent.mkdir(parents=True, exist_ok=True)
    quiet.write_text('{"fetchNews": "false", "checkForUpdates": false}')  # no news toast over the notebook
    log = (state / "jupyter.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"JupyterLab did not start; see {state / 'jupyter.log'}")
            time.sleep(0.5)
        yield f"{base}/lab/workspaces/{{workspace}}/tree/{{path}}?token={token}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@contextlib.contextmanager
def chromium(profile: Path, *, size: tuple[int, int] = (1500, 1100)) -> Iterator[Any]:
    """Headless Chromium under chromedriver with a fresh profile, fit to run as root, its window `size` pixels."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


# ---------------------------------------------------------------------------------------------------------------------
# The notebook through the UI
# ---------------------------------------------------------------------------------------------------------------------
def wait_for(condition: Callable[[], Any], timeout: float, what: str, *, every: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def _script(driver: Any, source: str, *args: Any) -> Any:
    return driver.execute_script(source, *args)


KERNEL_IDLE = """
const bar = document.querySelector('#jp-main-statusbar');
const text = bar ? bar.innerText : '';
return /\\| Idle/.test(text) && !/No Kernel/.test(text);
"""

PROMPTS = """
return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt')]
  .map(p => p.textContent.trim());
"""

ERRORS = """
return [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
  .map(o => o.textContent).filter(t => /Traceback|Error:/.test(t)).map(t => t.slice(0, 2000));
"""


def open_notebook(driver: Any, url: str, name: str) -> None:
    """Open notebook `name` in a workspace of its own (no other notebook restored beside it) and wait until its
    kernel is idle."""
    driver.get(url.format(workspace=Path(name).stem, path=name))
    wait_for(lambda: _script(driver, "return document.querySelector('.jp-NotebookPanel .jp-Cell') !== null"), 90,
             f"{name} to open")
    wait_for(lambda: _script(driver, KERNEL_IDLE), 90, f"the kernel of {name} to start")


def run_all(driver: Any, *, timeout: float) -> None:
    """Run > Run All Cells from the menu bar, then wait until every code cell ran and the kernel is idle.

    A click that lands while JupyterLab is still wiring the notebook's commands does nothing; as a reader would,
    click again when no cell started within a few seconds (three tries).
    """
    from selenium.webdriver.common.by import By

    for _ in range(3):
        driver.find_element(By.XPATH, "//li[contains(@class,'lm-MenuBar-item')][.//div[text()='Run']]").click()
        driver.find_element(By.XPATH, "//li[contains(@class,'lm-Menu-item')]"
                                      "[.//div[normalize-space()='Run All Cells']]").click()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: any(p != "[ ]:" for p in _script(driver, PROMPTS)), 10, "a cell to start")
            break

    def finished() -> bool:
        prompts = _script(driver, PROMPTS)
        return bool(prompts) and all(p not in ("[ ]:", "[*]:", "") for p in prompts) and _script(driver, KERNEL_IDLE)

    wait_for(finished, timeout, "Run All to finish", every=1.0)


def widget(driver: Any, label: str) -> Any:
    """The `<select>` of the dropdown widget described as `label`."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, f"//div[contains(@class,'widget-dropdown')][label[normalize-space()="
                                         f"'{label}']]/select")


def panel_image(driver: Any, label: str) -> str:
    """The `src` of the figure in the widget panel that holds a dropdown described as `label`."""
    return _script(driver, """
        const label = [...document.querySelectorAll('.widget-dropdown > label')]
          .find(l => l.textContent.trim() === arguments[0]);
        const panel = label && label.closest('.widget-vbox');
        const img = panel && panel.querySelector('.widget-output img');
        return img ? img.getAttribute('src') : '';""", label)


def choose(driver: Any, label: str, index: int, figure_of: str, *, timeout: float = 60) -> str:
    """Pick option `index` of dropdown `label` as a reader does; returns the panel's figure once it has changed."""
    from selenium.webdriver.support.ui import Select

    before = panel_image(driver, figure_of)
    Select(widget(driver, label)).select_by_index(index)
    return wait_for(lambda: (src := panel_image(driver, figure_of)) != before and src, timeout,
                    f"the figure to change after picking {label} #{index}")


def prepare(name: str, folder: Path, parameters: dict[str, Any]) -> Path:
    """A copy of notebook `name` in `folder` with `parameters` injected by papermill, not executed."""
    import papermill as pm

    folder.mkdir(parents=True, exist_ok=True)
    pm.execute_notebook(str(NOTEBOOKS / name), str(folder / name), parameters=parameters, prepare_only=True,
                        progress_bar=False)
    return folder / name


def page_text(driver: Any) -> str:
    return _script(driver, "return document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)').innerText")


def check_rendered(driver: Any, name: str) -> None:
    """No error output, every widget rendered as a widget (neither 'Loading widget...' nor its text repr)."""
    assert _script(driver, ERRORS) == [], f"{name}: error output"
    text = page_text(driver)
    assert "Loading widget" not in text and "VBox(children=" not in text, f"{name}: a widget did not render"


# ---------------------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(scenes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str, Path]]:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    root = tmp_path_factory.mktemp("lab")
    out = root / "runs"
    common = {**TINY_MODEL, "data_root": str(scenes_root), "epochs": 1}
    cut = {"train_from": "blocks.4"}  # the studies' regime, on the tiny backbone's last block
    prepare("10_explorer.ipynb", root / "notebooks", {**common, "max_images": 8, "figure_images": 1,
                                                       "output_dir": str(out / "explorer")})
    prepare("05_moe.ipynb", root / "notebooks", {**common, **cut, "seeds": [0], "heads": ["moe_static", "moe_dynamic"],
                                                  "hidden_dim": 16, "dim_feedforward": 32, "expert_hidden": 16,
                                                  "shown_images": 30, "output_dir": str(out / "moe")})
    with jupyter_lab(root / "notebooks", root) as url, chromium(root / "chromium-profile") as driver:
        yield driver, url, root


def _screenshot_on_failure(driver: Any, path: Path) -> contextlib.AbstractContextManager:
    @contextlib.contextmanager
    def guard() -> Iterator[None]:
        try:
            yield
        except BaseException:
            driver.save_screenshot(str(path))
            print(f"screenshot of the failure: {path}")
            raise

    return guard()


def test_explorer_runs_in_jupyterlab_and_its_widgets_redraw(lab: tuple[Any, str, Path], tmp_path: Path) -> None:
    driver, url, _ = lab
    with _screenshot_on_failure(driver, tmp_path / "explorer-failure.png"):
        open_notebook(driver, url, "10_explorer.ipynb")
        run_all(driver, timeout=150)
        check_rendered(driver, "10_explorer")
        first = panel_image(driver, "CAM of")
        assert first.startswith("data:image/png;base64,")
        inline = _script(driver, "return document.querySelectorAll('.jp-OutputArea-output img').length")
        assert inline >= 3  # the widget's view and the static figures, shown inline (not '<Figure size ...>')
        assert "<Figure size" not in page_text(driver)
        mode = _script(driver, """return [...document.querySelectorAll('.widget-toggle-buttons button')]
            .map(b => [b.textContent.trim(), b.scrollWidth <= b.clientWidth]);""")
        assert ["worst false positives", True] in mode  # the whole name shows, not "worst false positi..."
        after_image = choose(driver, "image", 3, "CAM of")
        assert after_image != first
        after_label = choose(driver, "CAM of", 5, "CAM of")
        assert after_label != after_image
        driver.save_screenshot(str(tmp_path / "explorer.png"))
        check_rendered(driver, "10_explorer after the picks")


def test_moe_gate_widget_redraws_for_another_label_and_context(lab: tuple[Any, str, Path], tmp_path: Path) -> None:
    driver, url, _ = lab
    with _screenshot_on_failure(driver, tmp_path / "moe-failure.png"):
        open_notebook(driver, url, "05_moe.ipynb")
        run_all(driver, timeout=150)
        check_rendered(driver, "05_moe")
        first = panel_image(driver, "context")
        assert first.startswith("data:image/png;base64,")
        after_label = choose(driver, "label", 4, "context")
        after_context = choose(driver, "context", 2, "context")
        assert len({first, after_label, after_context}) == 3


# ---------------------------------------------------------------------------------------------------------------------
# The README's screenshot
# ---------------------------------------------------------------------------------------------------------------------
def screenshot_explorer(target: Path, *, timeout: float = 900) -> None:
    """Run `notebooks/10_explorer.ipynb` with its default parameters in JupyterLab (it opens on the worst false
    positives of the most confidently wrong label) and save the explorer's controls and view as `target` (PNG)."""
    import io

    from PIL import Image
    from selenium.webdriver.common.by import By

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        copy = prepare("10_explorer.ipynb", state / "notebooks", {"output_dir": str(REPO / "runs" / "explorer")})
        with jupyter_lab(copy.parent, state) as url, chromium(state / "profile", size=(1400, 2400)) as driver:
            open_notebook(driver, url, copy.name)
            run_all(driver, timeout=timeout)
            check_rendered(driver, copy.name)
            label = driver.find_element(By.XPATH, "//div[contains(@class,'widget-dropdown')]/label[normalize-space()"
                                                  "='CAM of']")
            panel = label.find_element(By.XPATH, "./ancestor::div[contains(@class,'widget-vbox')][1]")
            driver.execute_script("arguments[0].scrollIntoView(true);", panel)
            time.sleep(1)
            view = panel.find_element(By.CSS_SELECTOR, ".widget-output")
            shot = Image.open(io.BytesIO(panel.screenshot_as_png))
            scale = shot.width / panel.rect["width"]
            bottom = (view.rect["y"] + view.rect["height"] - panel.rect["y"]) * scale  # the view, not the table
            target.parent.mkdir(parents=True, exist_ok=True)
            shot.crop((0, 0, shot.width, min(shot.height, int(bottom)))).save(target)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", type=Path, required=True, help="PNG file to write")
    missing_tools = _missing()
    if missing_tools:
        sys.exit(missing_tools)
    screenshot_explorer(parser.parse_args().screenshot)
