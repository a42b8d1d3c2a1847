"""Check a built HTML site (the Jupyter Book) in a real, headless browser, offline.

    problems = check_site("_build/html")          # [] when every page is fine
    python tests/browser.py _build/html [--query beta] [--timeout 1200]   # prints the problems, exit 1 if any

``check_site`` serves the folder with :mod:`http.server` on 127.0.0.1 (a free port, in a thread) and opens
every page (every ``.html`` file except the redirect ``index.html`` and what lies under ``_static/`` and
``_sources/``) in Chromium driven by Playwright, then the search page. A problem is reported, prefixed
with the page's path, for

* a request to anything but the local server (it is aborted: the book must work offline), or a
  ``<script src>``/``<link href>`` in the HTML that points outside the site;
* a page that does not load, a request that fails, a response with status >= 400;
* an ``<img>`` that did not load (``naturalWidth == 0``; lazy images are made eager first);
* math left raw: ``$$``, ``\\(`` or ``\\[`` in the page's text outside code, a page whose source has
  math (``class="math``) without a single ``mjx-container`` once MathJax has finished, a MathJax error;
* a console error or an uncaught exception in the page;
* a search (``search.html?q=QUERY``) that shows no result within 60 s.

Chromium is ``$CHROMIUM``, else ``/usr/bin/chromium``, else ``chromium`` on the PATH (Playwright's own
browser downloads are not needed). The browser runs in a child process in its own session, killed with
everything it started when the overall deadline passes, so the check cannot hang.

The time limits are guards against a hang, not measurements: a healthy page loads in about a second, but on
a machine loaded by other jobs (two cores shared with a training run) Chromium and MathJax can take many
times as long, so the limits are generous; they only cost time when something is broken.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["check_site", "find_chromium", "main", "pages"]

SKIP_DIRS = {"_static", "_sources", "_images", "_downloads"}
SEARCH_TIMEOUT_S = 60
# <link rel=...> values that make the browser fetch something.
FETCHING_RELS = {"stylesheet", "preload", "modulepreload", "prefetch", "preconnect", "dns-prefetch", "icon",
                 "shortcut icon", "apple-touch-icon", "manifest"}


def find_chromium() -> str | None:
    """The Chromium executable: ``$CHROMIUM``, ``/usr/bin/chromium`` or ``chromium`` on the PATH."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def pages(html_dir: str | os.PathLike) -> list[str]:
    """The pages to open: every ``.html`` file (as a path relative to ``html_dir``, with ``/``) except the
    top-level ``index.html`` (a redirect) and the files under ``_static/``, ``_sources/``..."""
    root = Path(html_dir)
    found = []
    for path in sorted(root.rglob("*.html")):
        rel = path.relative_to(root).as_posix()
        if rel == "index.html" or rel.split("/")[0] in SKIP_DIRS:
            continue
        found.append(rel)
    return found


def _static_problems(html_dir: Path, rel: str) -> list[str]:
    """``<script src>`` and fetching ``<link href>`` in the page's HTML that point outside the site."""
    text = (html_dir / rel).read_text(encoding="utf-8", errors="replace")
    problems = []
    for tag in re.findall(r"<(?:script|link)\b[^>]*>", text, flags=re.IGNORECASE):
        m = re.search(r"""\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", tag, flags=re.IGNORECASE)
        if not m:
            continue
        if tag.lower().startswith("<link"):
            rel_attr = re.search(r"""\brel\s*=\s*["']?([^"'>]+)""", tag, flags=re.IGNORECASE)
            if not rel_attr or rel_attr.group(1).strip().lower() not in FETCHING_RELS:
                continue
        problems.append(f"{rel}: external resource in the HTML: {m.group(1)}")
    return problems


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a browser closing a connection early is no problem
        pass


def check_site(html_dir: str | os.PathLike, query: str = "beta", timeout_s: float = 1200,
               page_timeout_s: float = 120) -> list[str]:
    """Open every page of the built site ``html_dir`` in headless Chromium; return the problems found.

    Args:
        html_dir: the built HTML (e.g. ``_build/html``).
        query: a word surely in the book: ``search.html?q=QUERY`` must show at least one result.
        timeout_s: overall deadline; past it the browser is killed and that is reported as a problem.
        page_timeout_s: the limit for each browser action (loading a page, waiting for MathJax, ...).

    Returns:
        One string per problem, starting with the page's path; empty when all is well.
    """
    html_dir = Path(html_dir).resolve()
    if not html_dir.is_dir():
        return [f"{html_dir}: not a folder"]
    chromium = find_chromium()
    if chromium is None:
        return ["no Chromium found: set CHROMIUM or install it (apt-get install chromium)"]
    todo = pages(html_dir)
    if not todo:
        return [f"{html_dir}: no HTML pages"]
    problems = [p for rel in todo for p in _static_problems(html_dir, rel)]

    server = _Server(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(html_dir)))
    thread = threading.Thread(target=server.serve_forever, name="browser-check-http", daemon=True)
    thread.start()
    proc = None
    try:
        job = {"base": f"http://127.0.0.1:{server.server_address[1]}/", "html_dir": str(html_dir),
               "pages": todo, "query": query, "chromium": chromium, "page_timeout_s": page_timeout_s,
               # the worker stops opening pages a little before the hard deadline, to report what it has
               "soft_deadline": time.time() + max(timeout_s - min(30.0, timeout_s / 4), 1.0)}
        proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        killed = False
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            killed = True
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:  # something outside the group holds the pipes: give up on them
                out, err = "", ""
        worker = []
        for line in out.splitlines():
            try:
                worker.append(json.loads(line))
            except ValueError:
                pass
        problems += [p for p in dict.fromkeys(worker) if isinstance(p, str)]
        if killed:
            problems.append(f"the browser check did not finish in {timeout_s:.0f} s: killed")
        elif proc.returncode != 0:
            tail = "\n".join(err.strip().splitlines()[-15:])
            problems.append(f"the browser check failed (exit status {proc.returncode}): {tail}")
    finally:
        if proc is not None:
            _kill_group(proc)  # also whatever the worker left behind in its process group
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return problems


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the worker, its Playwright driver and Chromium
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


# ---- the worker: runs in a child process (its own session), prints one JSON string per problem ----

# Raw TeX delimiters left in the page's text (outside code, where they may legitimately appear).
_RAW_MATH_JS = r"""() => {
  const skip = "pre, code, script, style, textarea, kbd, samp, mjx-container, .highlight";
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const found = [];
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest(skip)) continue;
    const t = n.textContent;
    const m = t.match(/\$\$|\\\(|\\\[/);
    if (m) found.push(t.slice(Math.max(0, m.index - 30), m.index + 40).replace(/\s+/g, " ").trim());
  }
  return found;
}"""

_IMAGES_JS = """() => Array.from(document.images)
  .filter(img => !(img.complete && img.naturalWidth > 0))
  .map(img => img.getAttribute('src') || img.currentSrc || '(no src)')"""

_MATHJAX_DONE_JS = """async (ms) => {
  if (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) return 'no MathJax';
  const timeout = new Promise(resolve => setTimeout(() => resolve('timeout'), ms));
  return await Promise.race([MathJax.startup.promise.then(() => 'done', e => 'error: ' + e), timeout]);
}"""


# Sphinx 7.4's searchtools.js: result links in #search-results ul.search; .search-summary says when it is done.
_SEARCH_DONE_JS = """() => {
  if (document.querySelectorAll('#search-results ul.search li a').length > 0) return 'found';
  const summary = document.querySelector('#search-results .search-summary');
  return summary && /did not match/.test(summary.textContent) ? 'nothing found' : false;
}"""


def _worker(job: dict) -> None:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    def report(problem: str) -> None:
        print(json.dumps(problem), flush=True)

    base, html_dir = job["base"], Path(job["html_dir"])
    ms = int(job["page_timeout_s"] * 1000)
    state = {"page": "(browser)", "collecting": False, "bad": set()}

    def where() -> str:
        return state["page"]

    def route(route):
        url = route.request.url
        if url.startswith((base, "data:", "blob:", "about:")):
            route.continue_()
        else:
            report(f"{where()}: external request: {url}")
            route.abort()

    def on_request_failed(request):
        # a request aborted by route() was reported there, one answered with an error status in on_response()
        if state["collecting"] and request.url.startswith(base) and request.url not in state["bad"]:
            state["bad"].add(request.url)
            report(f"{where()}: request failed: {request.url.removeprefix(base)} ({request.failure})")

    def on_response(response):
        if state["collecting"] and response.status >= 400:
            state["bad"].add(response.url)
            report(f"{where()}: HTTP {response.status}: {response.url.removeprefix(base)}")

    def on_console(msg):
        # "Failed to load resource" repeats a failed request, already reported above.
        if state["collecting"] and msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            report(f"{where()}: console error: {msg.text}")

    def on_page_error(error):
        if state["collecting"]:
            report(f"{where()}: uncaught exception: {error}")

    def open_page(context, rel: str, url: str):
        state["page"], state["collecting"], state["bad"] = rel, True, set()
        page = context.new_page()
        page.set_default_timeout(ms)
        page.set_default_navigation_timeout(ms)
        page.on("requestfailed", on_request_failed)
        page.on("response", on_response)
        page.on("console", on_console)
        page.on("pageerror", on_page_error)
        response = page.goto(url, wait_until="load", timeout=ms)
        if response is None or not response.ok:
            report(f"{rel}: page did not load (status {response.status if response else 'none'})")
        return page

    def close_page(page):
        state["collecting"] = False
        try:
            page.close()
        except PlaywrightError:
            pass

    def check_page(context, rel: str) -> None:
        page = open_page(context, rel, base + rel)
        try:
            # Make lazy images load: eager, scroll through the page, wait until all are complete.
            page.evaluate("() => { document.querySelectorAll('img').forEach(i => i.loading = 'eager');"
                          " window.scrollTo(0, document.body.scrollHeight); }")
            try:
                page.wait_for_function("() => Array.from(document.images).every(i => i.complete)",
                                       timeout=ms)
            except PlaywrightError:
                pass  # the images still missing are reported below
            for src in page.evaluate(_IMAGES_JS):
                report(f"{rel}: image did not load: {src}")
            has_math = 'class="math' in (html_dir / rel).read_text(encoding="utf-8", errors="replace")
            if has_math:
                mathjax = page.evaluate(_MATHJAX_DONE_JS, ms)
                if mathjax != "done":
                    report(f"{rel}: MathJax did not finish ({mathjax})")
                try:
                    page.wait_for_selector("mjx-container", state="attached", timeout=min(ms, 30000))
                except PlaywrightError:
                    report(f"{rel}: the page has math but MathJax rendered none (no mjx-container)")
                for text in page.evaluate("() => Array.from(document.querySelectorAll('mjx-merror'))"
                                          ".map(e => e.getAttribute('data-mjx-error') || e.textContent)"):
                    report(f"{rel}: MathJax error: {text}")
            raw = page.evaluate(_RAW_MATH_JS)
            if raw:
                shown = ", ".join(repr(snippet) for snippet in raw[:3]) + (", ..." if len(raw) > 3 else "")
                report(f"{rel}: raw math in the text ({len(raw)} places): {shown}")
            try:  # fonts and anything else late: give the network a moment to settle
                page.wait_for_load_state("networkidle", timeout=min(ms, 5000))
            except PlaywrightError:
                pass
        finally:
            close_page(page)

    def check_search(context, query: str) -> None:
        rel = f"search.html?q={query}"
        page = open_page(context, rel, base + rel)
        try:
            try:  # until a result shows, or Sphinx says it found nothing
                found = page.wait_for_function(_SEARCH_DONE_JS,
                                               timeout=min(ms, SEARCH_TIMEOUT_S * 1000)).json_value()
            except PlaywrightError:
                found = f"none within {SEARCH_TIMEOUT_S} s"
            if found != "found":
                shown = page.evaluate("() => (document.querySelector('#search-results') || document.body)"
                                      ".innerText.slice(0, 200)")
                report(f"{rel}: no search result for {query!r} ({found}: {shown!r})")
        finally:
            close_page(page)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=job["chromium"], headless=True, timeout=ms,
                                    args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            context = browser.new_context(service_workers="block")
            context.set_default_timeout(ms)
            context.route("**/*", route)
            todo = list(job["pages"])
            for i, rel in enumerate(todo):
                if time.time() > job["soft_deadline"]:
                    report(f"deadline: {len(todo) - i} pages not checked ({', '.join(todo[i:i + 5])}...)")
                    break
                try:
                    check_page(context, rel)
                except PlaywrightError as err:
                    report(f"{rel}: {str(err).splitlines()[0]}")
            else:
                if (html_dir / "search.html").is_file():
                    try:
                        check_search(context, job["query"])
                    except PlaywrightError as err:
                        report(f"search.html: {str(err).splitlines()[0]}")
                else:
                    report("search.html: missing")
        finally:
            state["collecting"] = False
            browser.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--worker":
        _worker(json.loads(argv[1]))
        return 0
    parser = argparse.ArgumentParser(description="Check a built HTML site in headless Chromium, offline.")
    parser.add_argument("html_dir", help="the built site, e.g. _build/html")
    parser.add_argument("--query", default="beta", help="a word surely in the book, for the search page")
    parser.add_argument("--timeout", type=float, default=1200, help="overall deadline in seconds")
    args = parser.parse_args(argv)
    problems = check_site(args.html_dir, query=args.query, timeout_s=args.timeout)
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
