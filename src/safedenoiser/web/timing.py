"""Time the web page's work at its default settings: ``python -m safedenoiser.web.timing [--threads 1] [--all]``.

Runs :meth:`Engine.run` (what the page's button calls) for the default request from a cold engine (models, judge and
sets loaded inside the timing, as a fresh ``safe-denoiser serve --no-preload`` does), then again warm; with ``--all``
every model x method at its defaults, warm; with ``--options`` the options beside the main knob, warm: the fitted
ratio estimator of the bank methods (its first request fits the classifiers) and the conditional mode's concept
(after the same request without it). Prints a markdown table of wall seconds, CPU seconds of the process (all
threads: on a shared machine, CPU s / threads is about the wall time on dedicated cores) and the trouser shares.
``--browser URL`` instead times a running ``safe-denoiser serve`` page in headless Chromium (selenium and the system
chromedriver): from the click on Generate, default settings, to both grids shown.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from .generation import METHODS, MODELS, Engine, Request, WebInputError


def _row(what: str, seconds: float, cpu: float, result) -> str:
    return (f"| {what} | {seconds:.1f} | {cpu:.1f} | {result.seconds.get('plain', 0):.1f} | {result.seconds.get('bank', 0):.1f} | "
            f"{result.seconds.get('safe', 0):.1f} | {100 * result.share(result.plain_labels):.0f}% | "
            f"{100 * result.share(result.safe_labels):.0f}% |")


def _time(engine: Engine, label: str, request: Request) -> None:
    """Print ``request``'s row (or what the page would show instead of grids)."""
    start, cpu = time.perf_counter(), time.process_time()
    try:
        result = engine.run(request)
    except WebInputError as err:
        print(f"| {label} | {time.perf_counter() - start:.1f} | | refused: {err} | | | | |", flush=True)
        return
    print(_row(label, time.perf_counter() - start, time.process_time() - cpu, result), flush=True)


def browser_seconds(url: str, timeout: float = 600.0) -> tuple[float, str]:
    """Seconds from the click on Generate to both grids on the page at ``url`` (default settings), and the status."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.ID, "generate"))
        start = time.perf_counter()
        driver.find_element(By.ID, "generate").click()
        WebDriverWait(driver, timeout, poll_frequency=0.1).until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#grid-plain img") and d.find_elements(By.CSS_SELECTOR, "#grid-safe img"))
        return time.perf_counter() - start, driver.find_element(By.ID, "status").text
    finally:
        driver.quit()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as safe-denoiser serve)")
    parser.add_argument("--all", action="store_true", help="also every model x method at its defaults (warm)")
    parser.add_argument("--options", action="store_true",
                        help="also the fitted ratio estimator (bank methods) and the concept (conditional, t2i)")
    parser.add_argument("--browser", metavar="URL", help="time a running page in headless Chromium instead")
    args = parser.parse_args(argv)
    if args.browser:
        seconds, status = browser_seconds(args.browser)
        print(f"click to both grids: {seconds:.1f} s (load average {os.getloadavg()[0]:.1f}); page: {status}")
        return
    torch.set_num_threads(args.threads)
    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    default = Request()
    print(f"| request (defaults: {default.count} images, {default.steps} steps, seeds {default.seeds[0]}-{default.seeds[-1]}) "
          "| wall s | CPU s | plain s | bank / setup s | safe s | trouser plain | trouser safe |\n|---|---|---|---|---|---|---|---|")
    engine = Engine()
    for label in ("default request, cold engine (loads models)", "default request, warm"):
        start, cpu = time.perf_counter(), time.process_time()
        result = engine.run(default)
        print(_row(f"{label}: {default.model}, '{default.prompt}', {default.method}", time.perf_counter() - start,
                   time.process_time() - cpu, result), flush=True)
    if args.all:
        for model in MODELS:
            for name, method in METHODS.items():
                if model not in method.models:
                    continue
                _time(engine, f"{model}, {name}", Request(model=model, method=name))
    if args.options:
        concept = "trousers, pants, jeans"
        for label, request in (("fashion-uncond, substitution, kernel estimator", Request(model="fashion-uncond", method="substitution")),
                               ("fashion-uncond, substitution, fitted ratio", Request(model="fashion-uncond", method="substitution", estimator="ratio")),
                               ("fashion-uncond, calibrated, fitted ratio (fit cached)", Request(model="fashion-uncond", method="calibrated", estimator="ratio")),
                               ("fashion-t2i, 'a shirt and trousers', conditional", Request(prompt="a shirt and trousers")),
                               (f"fashion-t2i, 'a shirt and trousers', conditional, concept '{concept}'",
                                Request(prompt="a shirt and trousers", concept=concept)),
                               (f"fashion-t2i, 'khakis', conditional, concept '{concept}'", Request(concept=concept))):
            _time(engine, label, request)


if __name__ == "__main__":
    main()
