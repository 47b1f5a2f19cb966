"""The chat page in a real Chromium, against `make run`-style servers.

Each site is a real daphne process (the command line `make run` uses) on its own fresh SQLite
file, talking to a real `langgraph dev` serving the echo model. Debian's `chromium` is driven by
Playwright. The tests assert what a person sees on the page, and save a screenshot of every state
under test-results/screenshots/. With UPDATE_DOCS_SCREENSHOTS=1 the README's screenshots in
docs/screenshots/ are refreshed too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import socketserver
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urljoin

import pytest

from agent.server import EmbeddedBackend, free_port
from runs import services
from tests.live import LiveSite, manage, site_env

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "test-results"
SHOTS = RESULTS / "screenshots"
DOCS_SHOTS = ROOT / "docs" / "screenshots"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"Chromium is not installed at {CHROMIUM}: install Debian's `chromium` package "
        "(apt-get install -y chromium) or set CHROMIUM_PATH to run the browser tests",
    ),
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
expect = sync_api.expect
expect.set_options(timeout=15_000)

UUID_PATH = re.compile(r"/c/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/$")
SLOW_TAIL = "".join(f" w{index}" for index in range(60))  # the slow echo's padding


def echo(text: str, seen: int) -> str:
    return f"You said: {text} (I can see {seen} of your messages)"


# Servers.


def fresh_site(
    name: str, *, backend_url: str, template_db: Path, workdir: Path, **settings: str
) -> LiveSite:
    """A site (daphne, as `make run` starts it) on its own copy of the migrated database, with
    `settings` in its environment."""
    database = workdir / f"{name}.sqlite3"
    shutil.copyfile(template_db, database)
    env = site_env(
        database_url=f"sqlite:///{database}",
        backend_url=backend_url,
        # django-environ reads an absolute path after four slashes.
        EMAIL_URL=f"filemail:///{mailbox(workdir, name)}",
        **settings,
    )
    return LiveSite(name, env=env)


def mailbox(workdir: Path, site_name: str) -> Path:
    """Where the site of that name writes the e-mail it sends, a file a connection."""
    return workdir / f"mail-{site_name}"


class Forwarder:
    """A TCP relay to the run backend that can be switched on later: until then, nothing
    listens on its port, exactly as when the backend is down."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.server: socketserver.ThreadingTCPServer | None = None

    def start(self) -> None:
        target = ("127.0.0.1", self.target_port)

        class Relay(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with socket.create_connection(target) as upstream:
                    pump = threading.Thread(target=copy, args=(upstream, self.request), daemon=True)
                    pump.start()
                    copy(self.request, upstream)
                    pump.join(timeout=30)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Relay)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def copy(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser")


@pytest.fixture(scope="module")
def template_db(workdir) -> Path:
    """A migrated database that every site copies, so each starts fresh and none migrates."""
    path = workdir / "template.sqlite3"
    manage(
        "migrate",
        "--noinput",
        env=site_env(database_url=f"sqlite:///{path}", backend_url="http://127.0.0.1:9"),
    )
    return path


def serving(
    name: str, backend_url: str, *, template_db: Path, workdir: Path, **settings: str
) -> Iterator[LiveSite]:
    """A fresh site on that backend, with `settings` in its environment, for a fixture to yield
    from; stopped after."""
    server = fresh_site(
        name, backend_url=backend_url, template_db=template_db, workdir=workdir, **settings
    )
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def site(langgraph: EmbeddedBackend, template_db, workdir) -> Iterator[LiveSite]:
    """The site on the fast echo model."""
    yield from serving("fast", langgraph.url, template_db=template_db, workdir=workdir)


@pytest.fixture(scope="module")
def slow_site(langgraph_slow: EmbeddedBackend, template_db, workdir) -> Iterator[LiveSite]:
    """The site on the slow echo model: a reply streams for about 4 s."""
    yield from serving("slow", langgraph_slow.url, template_db=template_db, workdir=workdir)


@pytest.fixture(scope="module")
def batched_site(langgraph_slow: EmbeddedBackend, template_db, workdir) -> Iterator[LiveSite]:
    """The slow echo model behind a site that batches every reply's tokens, 400 ms a frame, as a
    busy site does (about seven tokens a frame)."""
    yield from serving(
        "batched", langgraph_slow.url, template_db=template_db, workdir=workdir,
        CHAT_BATCH_DELTAS_FROM="1", CHAT_BATCH_DELTAS_MS="400",
    )  # fmt: skip


@pytest.fixture(scope="module")
def short_site(langgraph_short: EmbeddedBackend, template_db, workdir) -> Iterator[LiveSite]:
    """The site on the echo model that stops at its length limit after four tokens."""
    yield from serving("short", langgraph_short.url, template_db=template_db, workdir=workdir)


@pytest.fixture
def down_site(
    langgraph: EmbeddedBackend, template_db, workdir
) -> Iterator[tuple[LiveSite, Forwarder]]:
    """A site whose run backend is down until the test starts the forwarder to it."""
    forwarder = Forwarder(target_port=langgraph.port)
    server = fresh_site(
        "down", backend_url=f"http://127.0.0.1:{forwarder.port}", template_db=template_db,
        workdir=workdir,
    )  # fmt: skip
    yield server.start(), forwarder
    server.stop()
    forwarder.stop()


# The browser.


@pytest.fixture(scope="module")
def browser() -> Iterator:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def new_context(browser, request) -> Iterator[Callable]:
    """Fresh browser contexts (a new visitor each); on failure, the pages are saved as PNGs."""
    contexts = []
    failed_before = request.session.testsfailed

    def make(**options):
        options.setdefault("viewport", {"width": 1280, "height": 800})
        context = browser.new_context(**options)
        contexts.append(context)
        return context

    yield make
    if request.session.testsfailed > failed_before:
        SHOTS.mkdir(parents=True, exist_ok=True)
        for number, context in enumerate(contexts):
            for page_number, page in enumerate(context.pages):
                with contextlib.suppress(Exception):
                    name = f"FAILED-{request.node.name}-{number}-{page_number}.png"
                    page.screenshot(path=SHOTS / name)
    for context in contexts:
        context.close()


@pytest.fixture
def new_page(new_context) -> Callable:
    def make(**options):
        return new_context(**options).new_page()

    return make


def shot(page, name: str, *, docs: str = "") -> None:
    """Saves what the page shows now; with UPDATE_DOCS_SCREENSHOTS=1, a `docs` one also becomes
    docs/screenshots/<docs>.png, which the README shows."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", animations="disabled", caret="hide")
    if docs and os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":
        DOCS_SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=DOCS_SHOTS / f"{docs}.png", animations="disabled", caret="hide")


def site_shell(workdir: Path, code: str) -> None:
    """Runs `code` in `manage.py shell` on the fast site's database, with `User` and
    `tests.conftest` at hand (to make accounts and conversations without the backend)."""
    manage(
        "shell",
        "-c",
        f"from django.contrib.auth.models import User; from tests import conftest; {code}",
        env=site_env(
            database_url=f"sqlite:///{workdir / 'fast.sqlite3'}", backend_url="http://127.0.0.1:9"
        ),
    )


# What a person does and sees.


def message_box(page):
    return page.get_by_role("textbox", name="Message")


def memory_switch(page):
    return page.get_by_role("switch", name="Memory")


def say(page, text: str) -> None:
    """Types a message and presses Enter, as a person would: as soon as the box is there, whether
    or not the page's script runs yet."""
    box = message_box(page)
    box.fill(text)
    box.press("Enter")


def replies(page):
    return page.locator("#transcript li.message.assistant:not(.streaming)")


def streaming(page):
    return page.locator("#transcript li.message.streaming")


def badges(page):
    return page.locator("#transcript li.message .badge")


def reply_is(page, number: int, text: str) -> None:
    """Waits for the `number`th reply (1-based) to be on the page, finished, saying `text`."""
    expect(replies(page)).to_have_count(number)
    expect(replies(page).nth(number - 1).locator(".body")).to_have_text(text)


def sign_in(page, site, username: str, password: str) -> None:
    page.goto(f"{site.url}/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    with page.expect_navigation():  # to the page signed in, or back to this one refused
        page.get_by_role("button", name="Sign in").click()


def chat(page, text: str, *, number: int, seen: int) -> None:
    say(page, text)
    reply_is(page, number, echo(text, seen))


# The tests.


def test_the_memory_switch_decides_what_the_assistant_sees(new_page, site):
    page = new_page()
    page.goto(site.url)
    expect(page.locator("#empty-state")).to_contain_text(
        "With Memory on, the assistant remembers everything you send in this conversation; "
        "with it off, it sees only the message you just sent."
    )
    expect(memory_switch(page)).to_be_checked()
    expect(message_box(page)).to_be_focused()
    shot(page, "01-empty-state", docs="empty")

    memory_switch(page).uncheck()
    expect(page.locator("#memory-help")).to_contain_text("Memory off")
    chat(page, "first", number=1, seen=1)
    expect(page).to_have_url(UUID_PATH)
    chat(page, "second", number=2, seen=1)
    shot(page, "02-memory-off")

    memory_switch(page).check()
    expect(page.locator("#memory-help")).to_contain_text("Memory on")
    chat(page, "third", number=3, seen=1)
    chat(page, "fourth", number=4, seen=2)
    chat(page, "fifth", number=5, seen=3)
    marks = ["not remembered"] * 4 + ["remembered"] * 6
    expect(badges(page)).to_have_text(marks)
    # The conversation is titled by its first message, in the header, the list and the tab.
    expect(page.get_by_role("heading", level=1)).to_have_text("first")
    listed = page.get_by_role("navigation", name="Conversations").get_by_role("link", name="first")
    expect(listed).to_have_attribute("aria-current", "page")
    expect(page).to_have_title("first · Chat")
    # Every message says when it was sent.
    expect(page.locator("#transcript li.message time")).to_have_count(10)
    for label in page.locator("#transcript li.message time").all_inner_texts():
        assert re.search(r"\d{1,2}:\d{2}", label), label
    shot(page, "03-memory-on")

    # The transcript and its marks are the server's: a reload shows the same.
    page.reload()
    expect(badges(page)).to_have_text(marks)
    expect(replies(page).last.locator(".body")).to_have_text(echo("fifth", 3))
    expect(memory_switch(page)).to_be_checked()


def test_stop_keeps_the_partial_reply_and_says_it_was_stopped(new_page, slow_site):
    page = new_page()
    page.goto(slow_site.url)
    say(page, "tell me a long story")
    expect(streaming(page)).to_contain_text("w3")
    # The streaming reply sits in the live region that screen readers follow.
    expect(page.locator("[aria-live] li.message.streaming")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_hidden()
    shot(page, "04-streaming", docs="streaming")

    page.get_by_role("button", name="Stop").click()
    reply = replies(page).last
    expect(reply.locator(".status")).to_have_text("stopped")
    expect(reply.locator(".body")).to_contain_text(echo("tell me a long story", 1))
    expect(reply.locator(".body")).not_to_contain_text("w59")
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(message_box(page)).to_be_focused()
    partial = reply.locator(".body").inner_text()
    shot(page, "05-stopped")

    page.reload()
    expect(replies(page).last.locator(".status")).to_have_text("stopped")
    expect(replies(page).last.locator(".body")).to_have_text(partial)


def test_a_reader_who_scrolls_up_stays_put_and_latest_brings_them_back(new_page, slow_site):
    page = new_page(viewport={"width": 900, "height": 520})
    page.goto(slow_site.url)
    log = page.locator("#log")
    jump = page.get_by_role("button", name="Latest")
    expect(jump).to_be_hidden()
    say(page, "\n".join(f"- point {index}" for index in range(1, 26)))
    expect(streaming(page)).to_contain_text("w3")
    at_end = "log => log.scrollHeight - log.scrollTop - log.clientHeight < 96"
    assert log.evaluate(at_end)

    log.evaluate("log => { log.scrollTop = 0; }")  # up, to read the list
    expect(jump).to_be_visible()
    expect(streaming(page)).to_contain_text("w15")
    assert log.evaluate("log => log.scrollTop") == 0  # the new text did not pull the view down
    shot(page, "04b-jump-to-latest")

    jump.click()
    expect(jump).to_be_hidden()
    assert log.evaluate(at_end)
    expect(replies(page)).to_have_count(1)  # the rest streamed in at the end, followed
    assert log.evaluate(at_end)
    expect(jump).to_be_hidden()


def test_a_half_typed_message_survives_a_reload_until_it_is_sent(new_page, site):
    page = new_page()
    page.goto(site.url)
    message_box(page).fill("a thought in progress")
    page.reload()
    expect(message_box(page)).to_have_value("a thought in progress")
    message_box(page).press("Enter")
    reply_is(page, 1, echo("a thought in progress", 1))
    expect(page).to_have_url(UUID_PATH)
    page.reload()
    expect(message_box(page)).to_have_value("")  # sent: no longer a draft

    message_box(page).fill("the next one, unsent")
    page.reload()
    expect(message_box(page)).to_have_value("the next one, unsent")
    page.get_by_role("link", name="New chat").click()
    expect(message_box(page)).to_have_value("")  # each conversation keeps its own
    page.go_back()
    expect(message_box(page)).to_have_value("the next one, unsent")
    message_box(page).fill("")
    page.reload()
    expect(message_box(page)).to_have_value("")


def script_request(page, held: list):
    """The request for the page's script, held by a route, once the page has made it."""
    for _ in range(200):
        if held:
            return held[0]
        page.wait_for_timeout(50)
    raise AssertionError("the page never asked for its script")


def test_enter_pressed_before_the_pages_script_runs_sends_once_it_does(new_page, site):
    page = new_page()
    held = []
    page.route("**/runs/chat*.js", lambda route: held.append(route))  # held until released
    page.goto(site.url, wait_until="commit")
    message_box(page).fill("early bird")
    message_box(page).press("Enter")
    expect(message_box(page)).to_have_value("early bird")  # not a line added: held
    script_request(page, held).continue_()
    reply_is(page, 1, echo("early bird", 1))
    expect(message_box(page)).to_have_value("")

    # Should the script never come, the form is sent as a page without scripts sends it.
    unscripted = new_page()
    held.clear()
    unscripted.route("**/runs/chat*.js", lambda route: held.append(route))
    unscripted.goto(site.url, wait_until="commit")
    message_box(unscripted).fill("no script")
    message_box(unscripted).press("Enter")
    script_request(unscripted, held).abort()
    expect(unscripted).to_have_url(UUID_PATH)
    expect(replies(unscripted).locator(".body")).to_have_text(echo("no script", 1))


def test_the_whole_chat_works_from_the_keyboard(new_page, slow_site):
    page = new_page()
    page.goto(slow_site.url)
    expect(message_box(page)).to_be_focused()
    page.keyboard.type("line one")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("line two")
    page.keyboard.press("Enter")
    user = page.locator("#transcript li.message.user").last
    expect(user.locator(".body br")).to_have_count(1)
    expect(user.locator(".body")).to_have_text(re.compile(r"line one\s+line two"))
    expect(streaming(page)).to_contain_text("w2")
    expect(message_box(page)).to_be_focused()

    page.keyboard.press("Escape")
    expect(replies(page).last.locator(".status")).to_have_text("stopped")
    expect(message_box(page)).to_be_focused()

    # The memory switch and Forget are reachable and work with the keyboard too.
    memory_switch(page).focus()
    page.keyboard.press("Space")
    expect(memory_switch(page)).not_to_be_checked()
    expect(page.locator("#memory-help")).to_contain_text("Memory off")


def test_forget_asks_first_then_the_assistant_starts_counting_again(new_page, site):
    page = new_page()
    page.goto(site.url)
    chat(page, "one", number=1, seen=1)
    chat(page, "two", number=2, seen=2)
    forget = page.get_by_role("button", name="Forget")
    expect(forget).to_be_enabled()

    forget.click()
    dialog = page.get_by_role("dialog", name="Forget this conversation?")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    shot(page, "06-forget-dialog", docs="forget")
    page.keyboard.press("Escape")  # changing one's mind forgets nothing
    expect(dialog).to_be_hidden()
    chat(page, "three", number=3, seen=3)

    forget.click()
    dialog.get_by_role("button", name="Forget").click()
    expect(dialog).to_be_hidden()
    expect(page.locator("#toast")).to_contain_text("Forgotten")
    expect(forget).to_be_disabled()
    shot(page, "07-forgotten")
    chat(page, "four", number=4, seen=1)
    chat(page, "five", number=5, seen=2)
    # The transcript stays: every message is still on the page.
    expect(page.locator("#transcript li.message")).to_have_count(10)


def test_delete_asks_first_and_every_other_tab_follows(new_context, site):
    context = new_context()
    elsewhere = context.new_page()  # a tab on a new chat, opened before the conversation
    elsewhere.goto(site.url)
    listed_elsewhere = elsewhere.get_by_role("navigation", name="Conversations").get_by_role("link")
    first = context.new_page()
    first.goto(site.url)
    chat(first, "delete me", number=1, seen=1)
    expect(listed_elsewhere).to_have_text([re.compile("New chat"), "delete me", "Download all"])
    chat(first, "and me", number=2, seen=2)
    second = context.new_page()
    second.goto(first.url)
    reply_is(second, 2, echo("and me", 2))
    second.get_by_role("textbox", name="Message").fill("a draft")

    delete = first.get_by_role("button", name="Delete")
    delete.click()
    dialog = first.get_by_role("dialog", name="Delete this conversation?")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    shot(first, "07a-delete-dialog")
    dialog.get_by_role("button", name="Cancel").click()  # changing one's mind deletes nothing
    expect(dialog).to_be_hidden()
    first.reload()
    reply_is(first, 2, echo("and me", 2))

    delete.click()
    dialog.get_by_role("button", name="Delete").click()
    expect(first).to_have_url(f"{site.url}/")
    expect(first.locator(".banner.success")).to_have_text("Deleted “delete me”.")
    conversations = first.get_by_role("navigation", name="Conversations")
    expect(conversations.get_by_role("link", name="delete me")).to_have_count(0)
    expect(first.get_by_role("heading", level=1)).to_have_text("New chat")
    shot(first, "07b-deleted")

    # The other tab is told at once, and keeps what was being typed.
    expect(second.locator("#banner")).to_contain_text("This conversation was deleted")
    expect(second).to_have_url(f"{site.url}/")
    expect(second.get_by_role("heading", level=1)).to_have_text("New chat")
    expect(second.locator("#transcript li.message")).to_have_count(0)
    listed = second.get_by_role("navigation", name="Conversations").get_by_role("link")
    expect(listed).to_have_text([re.compile("New chat")])
    expect(second.get_by_role("button", name="Delete")).to_be_disabled()
    expect(message_box(second)).to_have_value("a draft")
    # The tab that showed another page only loses the conversation from its list.
    expect(listed_elsewhere).to_have_text([re.compile("New chat")])
    expect(elsewhere.locator("#banner")).to_be_hidden()
    shot(second, "07c-deleted-elsewhere")
    message_box(second).press("Enter")
    reply_is(second, 1, echo("a draft", 1))
    expect(second).to_have_url(UUID_PATH)
    expect(second.get_by_role("button", name="Delete")).to_be_enabled()
    expect(listed).to_have_text([re.compile("New chat"), "a draft", "Download all"])


def test_rename_shows_in_every_tab_and_keeps_the_list_order(new_context, site):
    context = new_context()
    first = context.new_page()
    first.goto(site.url)
    chat(first, "older one", number=1, seen=1)
    older = first.url
    first.goto(site.url)
    chat(first, "newer one", number=1, seen=1)
    second = context.new_page()
    second.goto(older)
    reply_is(second, 1, echo("older one", 1))
    listed = second.get_by_role("navigation", name="Conversations").get_by_role("link")
    expect(listed).to_have_text([re.compile("New chat"), "newer one", "older one", "Download all"])

    rename = second.get_by_role("button", name="Rename", exact=True)
    rename.click()
    dialog = second.get_by_role("dialog", name="Rename this conversation")
    name = dialog.get_by_role("textbox", name="Name")
    expect(name).to_have_value("older one")
    name.fill("never mind")
    dialog.get_by_role("button", name="Cancel").click()  # changing one's mind renames nothing
    expect(dialog).to_be_hidden()
    expect(second.get_by_role("heading", level=1)).to_have_text("older one")

    rename.click()
    expect(name).to_have_value("older one")
    name.fill("Older, renamed")
    shot(second, "07d-rename-dialog")
    name.press("Enter")
    expect(dialog).to_be_hidden()
    expect(second.locator("#toast")).to_have_text("Renamed.")
    expect(second.get_by_role("heading", level=1)).to_have_text("Older, renamed")
    expect(second).to_have_title("Older, renamed · Chat")
    expect(listed).to_have_text(
        [re.compile("New chat"), "newer one", "Older, renamed", "Download all"]
    )
    # The other tab shows another conversation: only its list changes.
    others = first.get_by_role("navigation", name="Conversations").get_by_role("link")
    expect(others).to_have_text(
        [re.compile("New chat"), "newer one", "Older, renamed", "Download all"]
    )
    expect(first.get_by_role("heading", level=1)).to_have_text("newer one")
    second.reload()
    expect(second.get_by_role("heading", level=1)).to_have_text("Older, renamed")


def test_a_long_title_fits_the_conversation_list_and_the_header(new_page, site):
    page = new_page()
    page.goto(site.url)
    text = "Plan a week of dinners for four with a shopping list"
    chat(page, text, number=1, seen=1)
    link = (
        page.get_by_role("navigation", name="Conversations")
        .locator("#conversation-list")
        .get_by_role("link")
    )
    expect(link).to_have_attribute("title", text)  # the whole title on hover
    fit = link.evaluate(
        """link => {
            const sidebar = link.closest('.sidebar');
            return {
                linkRight: link.getBoundingClientRect().right,
                sidebarRight: sidebar.getBoundingClientRect().right,
                sidebarScrolls: sidebar.scrollWidth > sidebar.clientWidth,
                textCut: link.scrollWidth > link.clientWidth,
                ellipsis: getComputedStyle(link).textOverflow,
            };
        }"""
    )
    assert fit["linkRight"] <= fit["sidebarRight"], fit
    assert not fit["sidebarScrolls"], fit
    assert fit["textCut"] and fit["ellipsis"] == "ellipsis", fit
    shot(page, "07e-long-title")

    # A window too narrow for the title and the controls side by side, not yet a phone's:
    # the controls go below the title, and nothing is pushed off the page.
    for width in (1000, 800):
        page.set_viewport_size({"width": width, "height": 700})
        header = page.evaluate(
            """() => ({
                pageWidth: document.documentElement.scrollWidth,
                titleWidth: document.querySelector('#chat-title').clientWidth,
                deleteRight: document.querySelector('#delete').getBoundingClientRect().right,
            })"""
        )
        assert header["pageWidth"] <= width and header["deleteRight"] <= width, header
        assert header["titleWidth"] >= 300, header
    shot(page, "07f-long-title-narrow-window")


def test_signing_in_or_out_in_another_tab_brings_this_tab_along_with_its_draft(
    new_context, site, workdir
):
    site_shell(workdir, "User.objects.create_user('gale', password='pw-gale-12345')")
    context = new_context()
    tab = context.new_page()
    tab.goto(site.url)
    chat(tab, "before signing in", number=1, seen=1)
    expect(tab).to_have_url(UUID_PATH)
    conversation_url = tab.url
    message_box(tab).fill("a half-typed thought")

    other = context.new_page()
    sign_in(other, site, "gale", "pw-gale-12345")
    expect(other.get_by_role("button", name="Sign out")).to_be_visible()

    # The first tab follows by itself: the same conversation, now the account's, and the draft.
    expect(tab.get_by_role("button", name="Sign out")).to_be_visible()
    expect(tab).to_have_url(conversation_url)
    expect(message_box(tab)).to_have_value("a half-typed thought")
    reply_is(tab, 1, echo("before signing in", 1))
    expect(tab.locator("#conversation-list a")).to_have_text(["before signing in"])
    message_box(tab).fill("")
    chat(tab, "signed in now", number=2, seen=2)  # memory on: the thread came along

    message_box(tab).fill("another thought")
    other.get_by_role("button", name="Sign out").click()
    # Signed out: the account's conversation is not shown here any more; the draft stays.
    expect(tab.get_by_role("link", name="Sign in")).to_be_visible()
    expect(tab).to_have_url(f"{site.url}/")
    expect(tab.locator("#conversation-list a")).to_have_count(0)
    expect(message_box(tab)).to_have_value("another thought")

    # Signing out in this very tab takes its drafts along with the session.
    sign_in(tab, site, "gale", "pw-gale-12345")
    message_box(tab).fill("a draft of the account's")
    tab.get_by_role("button", name="Sign out").click()
    expect(tab.get_by_role("link", name="Sign in")).to_be_visible()
    expect(message_box(tab)).to_have_value("")


def test_search_finds_a_conversation_by_what_was_said_and_show_older_pages_the_list(
    new_page, site, workdir
):
    site_shell(
        workdir,
        "user = User.objects.create_user('kim', password='pw-kim-12345'); "
        "made = conftest.conversations_for(user, 52); "
        "made[51].messages.create(role='user', text='Plans for the Lisbon trip')",
    )
    page = new_page()
    sign_in(page, site, "kim", "pw-kim-12345")
    links = page.locator("#conversation-list a")
    expect(links).to_have_count(50)
    expect(links.first).to_have_text("Chat 00")
    page.get_by_role("link", name="Show older").click()
    expect(links).to_have_count(52)
    expect(links.last).to_have_text("Chat 51")
    expect(page.get_by_role("link", name="Show older")).to_be_hidden()

    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("lisbon")  # said in Chat 51, not in its title
    expect(links).to_have_text(["Chat 51"])
    expect(page.locator("#live-status")).to_have_text("1 conversation matches.")
    expect(page.locator("#list-heading")).to_have_text("Matching “lisbon”")
    search.fill("chat 0")
    expect(links).to_have_count(10)
    search.fill("nothing like this")
    expect(page.locator("#conversation-list")).to_have_text("No conversations match.")
    shot(page, "07e-search-nothing")
    search.press("Escape")
    expect(links).to_have_count(50)
    expect(page.get_by_role("link", name="Show older")).to_be_visible()
    links.last.click()
    expect(page).to_have_url(UUID_PATH)
    expect(page.locator("#chat-title")).to_have_text("Chat 49")


def test_the_conversation_list_is_grouped_by_the_day_each_last_changed(new_page, site, workdir):
    site_shell(
        workdir,
        "from datetime import timedelta; from django.utils import timezone; "
        "from runs.models import Conversation; "
        "user = User.objects.create_user('lee', password='pw-lee-12345'); "
        "made = conftest.conversations_for(user, 6); now = timezone.now(); "
        "[Conversation.objects.filter(pk=c.pk).update(updated_at=now - timedelta(days=days)) "
        " for c, days in zip(made, (0, 0, 1, 3, 12, 90))]",
    )
    page = new_page()
    sign_in(page, site, "lee", "pw-lee-12345")
    items = page.locator("#conversation-list > li")
    expect(items).to_have_count(6)
    shown = """(items) => items.map((item) => {
      const label = getComputedStyle(item, "::before").content;
      return label === "none" ? null : JSON.parse(label);
    })"""
    groups = items.evaluate_all(shown)
    assert groups[:5] == ["Today", None, "Yesterday", "Previous 7 days", "Previous 30 days"]
    assert re.fullmatch(r"[A-Z][a-z]+ \d{4}", groups[5]), groups  # a month, 90 days back
    shot(page, "07f-list-groups")

    # Yesterday's conversation, said something in today, joins today's at the top.
    page.get_by_role("link", name="Chat 02").click()
    chat(page, "news", number=1, seen=1)
    expect(page.locator("#conversation-list a").first).to_have_text("Chat 02")
    groups = items.evaluate_all(shown)
    assert groups[:4] == ["Today", None, None, "Previous 7 days"], groups


def test_a_cut_websocket_reconnects_and_the_reply_completes(new_page, slow_site):
    page = new_page()
    # Keep a handle on the page's sockets, so the test can cut the connection mid-reply.
    page.add_init_script(
        """
        window.__sockets = [];
        const NativeWebSocket = window.WebSocket;
        window.WebSocket = class extends NativeWebSocket {
          constructor(...args) { super(...args); window.__sockets.push(this); }
        };
        """
    )
    page.goto(slow_site.url)
    say(page, "keep talking")
    expect(streaming(page)).to_contain_text("w1")
    page.evaluate("window.__sockets.forEach((socket) => socket.close())")
    shot(page, "08-connection-cut")

    reply_is(page, 1, echo("keep talking", 1) + SLOW_TAIL)
    assert page.evaluate("window.__sockets.length") >= 2, "the page opened a new socket"
    expect(page.locator("#banner")).to_be_hidden()
    shot(page, "09-reconnected")


def frames_seen_first_by(code: str) -> str:
    """A script for `add_init_script`: `code` sees each frame the page's websocket brings (as
    `frame`, parsed) before the page does, drops it by returning true, and may change it."""
    script = """
    const NativeWebSocket = window.WebSocket;
    window.WebSocket = class extends NativeWebSocket {
      addEventListener(type, listener, ...rest) {
        if (type !== "message") return super.addEventListener(type, listener, ...rest);
        return super.addEventListener(type, (event) => {
          const frame = JSON.parse(event.data);
          if ((() => { SEES_FIRST })()) return;
          listener(new MessageEvent("message", { data: JSON.stringify(frame) }));
        }, ...rest);
      }
    };
    """
    return script.replace("SEES_FIRST", code)


def test_a_delta_lost_on_the_way_is_recovered_while_the_reply_streams(new_page, slow_site):
    page = new_page()
    # The page never sees the third delta, as when a pub/sub message is dropped.
    page.add_init_script(
        "window.__dropped = null;"
        + frames_seen_first_by(
            """
            if (frame.type === "run.delta" && frame.seq === 3 && window.__dropped === null) {
              window.__dropped = frame.text;
              return true;
            }
            """
        )
    )
    page.goto(slow_site.url)
    say(page, "keep talking")
    # Still streaming, and nothing is missing from what is shown.
    expect(streaming(page)).to_contain_text(echo("keep talking", 1) + " w0 w1")
    assert page.evaluate("window.__dropped") == "keep "
    reply_is(page, 1, echo("keep talking", 1) + SLOW_TAIL)


# Records the `run.delta` frames the page gets and every text its streaming reply shows.
RECORD_FRAMES_AND_SHOWN_TEXT = (
    frames_seen_first_by('if (frame.type === "run.delta") window.__frames.push(frame.text);')
    + """
window.__frames = [];
window.__shown = [];
new MutationObserver(() => {
  const text = document.querySelector("#transcript .streaming .body")?.textContent.trim();
  if (text && text !== window.__shown.at(-1)) window.__shown.push(text);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""
)


def test_a_reply_sent_several_words_a_frame_is_still_written_out_word_by_word(
    new_page, batched_site
):
    page = new_page()
    page.add_init_script(RECORD_FRAMES_AND_SHOWN_TEXT)
    page.goto(batched_site.url)
    say(page, "a word at a time")
    reply_is(page, 1, echo("a word at a time", 1) + SLOW_TAIL)
    frames, shown = page.evaluate("[window.__frames, window.__shown]")
    reply = "".join(frames)
    assert reply == echo("a word at a time", 1) + SLOW_TAIL
    assert sum(len(text.split()) > 1 for text in frames) >= 5, frames  # the server batched
    # Each text shown is the reply so far, and there were nearly as many as words, not frames.
    assert all(reply.startswith(text) for text in shown)
    assert len(shown) >= 0.75 * len(reply.split()) > 3 * len(frames), (len(shown), len(frames))

    # Asked for reduced motion, the page shows each frame's words as they come.
    still = new_page(reduced_motion="reduce")
    still.add_init_script(RECORD_FRAMES_AND_SHOWN_TEXT)
    still.goto(batched_site.url)
    say(still, "all at once")
    reply_is(still, 1, echo("all at once", 1) + SLOW_TAIL)
    frames, shown = still.evaluate("[window.__frames, window.__shown]")
    assert len(shown) == len(frames)


# A message whose echo is markdown: a code block, a list, emphasis, code, a link, and what must
# stay text.
MARKDOWN_MESSAGE = (
    "Look:\n```py\nx = 1\n```\n- **bold** and `code`\n- [a link](https://example.com/) or"
    " https://example.net/x, not main.py"
    ' <img src=x onerror="window.__xss=1"> [bad](javascript:window.__xss=2)'
)

# Records the shape (elements and links) and the words of the streaming reply as last shown.
RECORD_STREAMED_SHAPE = """
window.__shape = (root) => [...root.querySelectorAll("*")].map(
  (node) => node.tagName + (node.hasAttribute("href") ? `[${node.getAttribute("href")}]` : "")
);
window.__words = (root) => root.textContent.split(/\\s+/).filter(Boolean);
window.__streamed = null;
new MutationObserver(() => {
  const body = document.querySelector("#transcript .streaming .body");
  if (body) window.__streamed = { shape: window.__shape(body), words: window.__words(body) };
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


def test_a_reply_takes_its_markdown_shape_while_it_streams(new_page, slow_site):
    page = new_page()
    page.add_init_script(RECORD_STREAMED_SHAPE)
    page.goto(slow_site.url)
    say(page, MARKDOWN_MESSAGE)
    body = streaming(page).locator(".body")
    # Shaped while the echo's padding still streams, not only once the reply is saved.
    expect(body.locator("ul > li")).to_have_count(2)
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("li code")).to_have_text("code")
    expect(body.locator(".code-block .code-language")).to_have_text("py")
    expect(body.locator(".code-block pre")).to_have_text("x = 1\n")
    expect(body.locator(".code-block .hljs-number")).to_have_text("1")
    expect(body.locator("a")).to_have_count(2)
    expect(body.locator("a").first).to_have_attribute("href", "https://example.com/")
    expect(body.locator("a").last).to_have_attribute("href", "https://example.net/x")
    for link in body.locator("a").all():
        expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    expect(body).to_contain_text('<img src=x onerror="window.__xss=1">')
    expect(body).to_contain_text("[bad](javascript:window.__xss=2)")
    # What the reply has done with stays put as it grows: its first paragraph, its code block
    # and the link in the list item still being written are the same elements a few words on
    # (the link can be clicked meanwhile).
    first_blocks = (
        body.locator(":scope > p").first.element_handle(),
        body.locator(".code-block").element_handle(),
        body.locator("a").first.element_handle(),
    )
    expect(streaming(page)).to_contain_text("w1")
    expect(streaming(page)).to_contain_text("w5")
    assert all(block.evaluate("(node) => node.isConnected") for block in first_blocks)
    expect(streaming(page)).not_to_contain_text("w59")

    expect(replies(page)).to_have_count(1)
    saved = replies(page).last.locator(".body")
    expect(saved).to_contain_text("w59")
    # The saved reply, rendered by the server, looks as the streamed one did at its end.
    streamed = page.evaluate("window.__streamed")
    assert saved.evaluate("(node) => window.__shape(node)") == streamed["shape"]
    assert saved.evaluate("(node) => window.__words(node)") == streamed["words"]
    assert streamed["shape"] == [
        "P", "DIV", "DIV", "SPAN", "BUTTON", "PRE", "CODE", "SPAN",  # the code block, coloured
        "UL", "LI", "STRONG", "CODE", "LI", "A[https://example.com/]", "A[https://example.net/x]",
    ]  # fmt: skip
    assert page.evaluate("window.__xss") is None
    assert page.locator("#transcript img").count() == 0


def test_without_the_markdown_libraries_a_streaming_reply_is_plain_text(new_page, slow_site):
    page = new_page()
    page.route("**/static/runs/vendor/**", lambda route: route.abort())
    page.goto(slow_site.url)
    say(page, "some **bold** words")
    expect(streaming(page).locator(".stream-text")).to_contain_text(
        echo("some **bold** words", 1) + " w0"
    )
    expect(replies(page)).to_have_count(1)
    expect(replies(page).last.locator(".body strong")).to_have_text("bold")


def test_a_second_tab_shows_the_same_reply_streaming(new_context, slow_site):
    context = new_context()
    first = context.new_page()
    first.goto(slow_site.url)
    say(first, "share this")
    expect(first).to_have_url(UUID_PATH)
    expect(streaming(first)).to_be_visible()

    second = context.new_page()
    second.goto(first.url)
    expect(second.locator("#transcript li.message.user")).to_have_text(re.compile("share this"))
    expect(streaming(second)).to_contain_text(echo("share this", 1))
    expect(streaming(second)).to_contain_text(re.compile(r"w\d"))
    expect(second.get_by_role("button", name="Stop")).to_be_visible()
    shot(second, "10-second-tab-streaming")

    reply_is(second, 1, echo("share this", 1) + SLOW_TAIL)
    reply_is(first, 1, echo("share this", 1) + SLOW_TAIL)
    expect(second.get_by_role("button", name="Send")).to_be_visible()


def test_without_javascript_the_form_still_chats(new_page, site):
    page = new_page(java_script_enabled=False)
    page.goto(site.url)
    # Controls that need the script are not offered.
    expect(page.get_by_role("button", name="Forget")).to_be_hidden()
    expect(page.get_by_role("button", name="Stop")).to_be_hidden()

    memory_switch(page).uncheck()
    message_box(page).fill("no script")
    page.get_by_role("button", name="Send").click()
    expect(page).to_have_url(UUID_PATH)
    reply_is(page, 1, echo("no script", 1))
    expect(memory_switch(page)).not_to_be_checked()  # the conversation keeps its switch

    message_box(page).fill("still none")
    page.get_by_role("button", name="Send").click()
    reply_is(page, 2, echo("still none", 1))

    memory_switch(page).check()
    for number, (text, seen) in enumerate([("remember a", 1), ("remember b", 2)], start=3):
        message_box(page).fill(text)
        page.get_by_role("button", name="Send").click()
        reply_is(page, number, echo(text, seen))
    expect(badges(page)).to_have_text(["not remembered"] * 4 + ["remembered"] * 4)
    expect(page.get_by_role("heading", level=1)).to_have_text("no script")
    shot(page, "11-no-javascript", docs="no-javascript")


def test_a_failed_reply_shows_a_banner_and_retry_asks_again_in_its_place(new_page, down_site):
    site, backend = down_site
    page = new_page()
    page.goto(site.url)
    say(page, "are you there")
    banner = page.locator("#banner")
    expect(banner).to_be_visible()
    expect(banner).to_have_attribute("role", "alert")
    expect(replies(page).last).to_have_class(re.compile(r"\bfailed\b"))
    retry = banner.get_by_role("button", name="Retry")
    expect(retry).to_be_visible()
    shot(page, "12-error-banner", docs="error-retry")

    backend.start()  # the backend is back
    retry.click()
    reply_is(page, 1, echo("are you there", 1))  # the failed reply's place
    expect(page.locator("#transcript li.message.user")).to_have_count(1)
    expect(banner).to_be_hidden()
    expect(message_box(page)).to_be_focused()


def test_a_reply_cut_at_the_length_limit_ends_with_a_note_saying_so(new_page, short_site):
    page = new_page()
    page.goto(short_site.url)
    say(page, "tell me everything")
    reply = replies(page).last
    expect(reply.locator(".body")).to_have_text("You said: tell me")
    note = reply.locator(".notice")
    expect(note).to_have_text(services.REPLY_CUT_NOTICE)
    shot(page, "12b-cut-reply")

    def reads_as_a_note_after_the_text() -> None:
        # Measured in one step in the page: the socket's snapshot replaces the transcript's items
        # after a reload, and two boxes measured apart may straddle that (one of a detached item).
        follows = reply.evaluate(
            "item => item.querySelector('.notice').getBoundingClientRect().top"
            " >= item.querySelector('.body').getBoundingClientRect().bottom"
        )
        assert follows, "the note follows the reply's text"
        # Not an error: the run completed, so the note is in the muted colour of the message's
        # own details (its time), not the red of a failure.
        colour = note.evaluate("node => getComputedStyle(node).color")
        assert colour == reply.locator("time").evaluate("node => getComputedStyle(node).color")
        expect(reply.locator(".status")).to_have_count(0)

    reads_as_a_note_after_the_text()
    page.reload()  # the server's page says the same, in the same place
    expect(note).to_have_text(services.REPLY_CUT_NOTICE)
    reads_as_a_note_after_the_text()


def test_continue_goes_on_with_a_cut_reply_in_its_place(new_page, short_site):
    page = new_page()
    page.goto(short_site.url)
    say(page, "tell me everything")
    reply = replies(page).last
    expect(reply.locator(".body")).to_have_text("You said: tell me")
    reply_id = reply.get_attribute("data-id")
    go_on = reply.get_by_role("button", name="Continue this reply")
    expect(go_on).to_be_visible()
    go_on.click()
    # The same reply goes on (the echo repeats the request to go on), and is cut again.
    expect(replies(page)).to_have_count(1)
    expect(replies(page).last.locator(".body")).to_have_text(
        "You said: tell me You said: Continue your"
    )
    expect(replies(page).last).to_have_attribute("data-id", reply_id)
    expect(replies(page).last.locator(".notice")).to_have_text(services.REPLY_CUT_NOTICE)
    expect(message_box(page)).to_be_focused()
    page.reload()  # the server's page offers it too, on the last reply only
    expect(replies(page).last.locator(".body")).to_have_text(
        "You said: tell me You said: Continue your"
    )
    expect(page.get_by_role("button", name="Continue this reply")).to_have_count(1)
    say(page, "and then")
    expect(replies(page)).to_have_count(2)
    expect(replies(page).first.get_by_role("button", name="Continue this reply")).to_have_count(0)
    expect(replies(page).last.get_by_role("button", name="Continue this reply")).to_be_visible()


def test_a_continuation_streams_joined_to_its_reply_as_it_will_be_saved(new_page, short_site):
    page = new_page()
    # As from a model whose tokens begin with their spaces (SmolLM2's do; the echo's end with
    # them) and whose continuation begins with punctuation: the cut reply comes without its
    # trailing space, and the continuation's first token with a comma before it. The
    # continuation's end is held back, so that it stays as it streamed.
    page.add_init_script(
        frames_seen_first_by(
            """
            if (frame.type === "run.completed" && !window.__continuation) {
              frame.message.text = frame.message.text.trimEnd();
            }
            if (frame.type === "run.started" && frame.continues) window.__continuation = frame.run;
            if (frame.run !== undefined && frame.run === window.__continuation) {
              if (frame.type === "run.delta" && frame.seq === 1) frame.text = ", " + frame.text;
              return frame.type === "run.completed";
            }
            """
        )
    )
    page.goto(short_site.url)
    say(page, "tell me everything")
    cut = "You said: tell me"
    expect(replies(page).last).to_have_attribute("data-text", cut)
    replies(page).last.get_by_role("button", name="Continue this reply").click()
    # It reads as the server joins a reply and its continuation, not "tell me , You".
    joined = services.reply_continued(cut, ", You said: Continue your")
    assert joined == f"{cut}, You said: Continue your"
    expect(streaming(page).locator(".body")).to_have_text(joined)


def test_copy_buttons_and_code_blocks(new_context, site):
    context = new_context(permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.goto(site.url)
    text = "Here is code:\n```python\nprint('hi')\n```\nthanks"
    say(page, text)
    expect(replies(page)).to_have_count(1)
    reply = replies(page).last
    code = reply.locator(".code-block")
    expect(code.locator(".code-language")).to_have_text("python")
    expect(code.locator("pre")).to_have_text("print('hi')\n")
    # Coloured: the string apart from the rest of the code.
    string = code.locator(".hljs-string")
    expect(string).to_have_text("'hi'")
    colour = "(node) => getComputedStyle(node).color"
    assert string.evaluate(colour) != code.locator("code").evaluate(colour)

    code.get_by_role("button", name="Copy code").click()
    expect(code.get_by_role("button", name="Copy code")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"

    reply.get_by_role("button", name="Copy reply").click()
    assert page.evaluate("navigator.clipboard.readText()") == echo(text, 1)


def test_every_control_is_labelled(new_page, site):
    page = new_page()
    page.goto(site.url)
    chat(page, "label check", number=1, seen=1)
    snapshot = page.locator("body").aria_snapshot()
    unnamed = [
        line.strip()
        for line in snapshot.splitlines()
        if re.match(r"\s*- (button|link|textbox|switch|checkbox|combobox)\b(?! \")", line)
    ]
    assert not unnamed, f"controls without a name: {unnamed}\n{snapshot}"
    for role, name in [
        ("switch", "Memory"),
        ("textbox", "Message"),
        ("button", "Send"),
        ("button", "Forget"),
        ("button", "Copy reply"),
        ("link", "New chat"),
    ]:
        expect(page.get_by_role(role, name=name)).to_be_visible()


def test_the_page_loads_without_a_failed_request_and_has_a_tab_icon(new_page, site):
    page = new_page()
    failed = []
    page.on("response", lambda response: response.ok or failed.append(response.url))
    page.goto(site.url)
    chat(page, "icon check", number=1, seen=1)
    icon = page.locator("link[rel=icon]").get_attribute("href")
    response = page.request.get(urljoin(site.url, icon))
    assert response.ok and response.headers["content-type"].startswith("image/svg+xml")
    # Browsers ask for /favicon.ico when a page names no icon; this one names one.
    assert not failed, f"failed requests: {failed}"
    shown = page.locator("body").inner_text()
    assert "{#" not in shown and "{%" not in shown, "a template's comment or tag shows as text"


def test_phones_and_dark_mode(new_page, site):
    """The main states as the README shows them: light, dark, and a 360 px phone."""
    page = new_page()
    page.goto(site.url)
    memory_switch(page).uncheck()
    chat(page, "What is 2 + 2?", number=1, seen=1)
    memory_switch(page).check()
    chat(page, "My name is Ada.", number=2, seen=1)
    code = "Show `print` in Python:\n```python\nprint('Hello, Ada')\n```\nThanks!"
    say(page, code)
    expect(replies(page)).to_have_count(3)
    chat(page, "What is my name?", number=4, seen=3)
    page.mouse.move(0, 0)
    page.evaluate("document.activeElement.blur()")
    shot(page, "chat-light", docs="light")

    page.emulate_media(color_scheme="dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(15, 17, 21)", background
    shot(page, "chat-dark", docs="dark")

    page.set_viewport_size({"width": 360, "height": 740})
    page.emulate_media(color_scheme="light")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 360, f"the page scrolls sideways on a phone: {width} px wide"
    expect(message_box(page)).to_be_visible()
    expect(memory_switch(page)).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    shot(page, "chat-phone", docs="phone")

    # The conversation list is a drawer on phones.
    toggle = page.get_by_role("button", name="Conversations")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(page.get_by_role("link", name="New chat")).to_be_hidden()
    toggle.click()
    expect(page.get_by_role("link", name="New chat")).to_be_visible()
    shot(page, "chat-phone-conversations", docs="phone-conversations")
    page.keyboard.press("Escape")
    expect(page.get_by_role("link", name="New chat")).to_be_hidden()
    expect(toggle).to_be_focused()

    # The conversation's actions are a menu: the title, the switch and "⋯" take one row.
    menu = page.get_by_role("button", name="Conversation actions")
    rename = page.locator("#rename")  # the menu's (its dialog has a Rename button too)
    expect(rename).to_be_hidden()
    rows = page.evaluate(
        """() => ['#chat-title', '.switch', '#actions-toggle'].map((selector) => {
            const box = document.querySelector(selector).getBoundingClientRect();
            return Math.round(box.top + box.height / 2);
        })"""
    )
    assert max(rows) - min(rows) <= 4, f"not one row: the middles are at {rows} px"
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(rename).to_be_focused()
    for role, name in (
        ("button", "Forget"),
        ("link", "Download"),
        ("link", "Share…"),
        ("button", "Delete"),
    ):
        expect(page.get_by_role(role, name=name, exact=True)).to_be_visible()
    shot(page, "chat-phone-actions", docs="phone-actions")
    page.keyboard.press("Escape")
    expect(rename).to_be_hidden()
    expect(menu).to_be_focused()
    # An action closes the menu, and focus comes back to "⋯" when its dialog closes.
    menu.click()
    rename.click()
    expect(rename).to_be_hidden()
    expect(page.locator("#rename-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#rename-dialog")).to_be_hidden()
    expect(menu).to_be_focused()
    # A tap anywhere else closes it too, and so does moving the focus out of it.
    menu.click()
    expect(rename).to_be_visible()
    replies(page).last.locator(".body").click()
    expect(rename).to_be_hidden()
    expect(menu).to_have_attribute("aria-expanded", "false")
    menu.click()
    expect(rename).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(menu).to_be_focused()
    expect(rename).to_be_visible()
    page.keyboard.press("Shift+Tab")
    expect(memory_switch(page)).to_be_focused()
    expect(rename).to_be_hidden()

    page.emulate_media(color_scheme="dark")
    shot(page, "chat-phone-dark", docs="phone-dark")

    # A new chat has nothing to act on yet: "⋯" comes with its first message.
    page.get_by_role("button", name="Conversations").click()
    page.get_by_role("link", name="New chat").click()
    expect(page.locator("#chat-title")).to_have_text("New chat")
    expect(menu).to_be_hidden()
    chat(page, "a fresh start", number=1, seen=1)
    expect(menu).to_be_visible()
    menu.click()
    expect(page.get_by_role("button", name="Delete", exact=True)).to_be_visible()


def test_regenerate_replaces_the_last_reply_on_the_page_and_in_the_memory(new_page, site):
    page = new_page()
    page.goto(site.url)
    regenerate = page.get_by_role("button", name="Regenerate this reply")
    chat(page, "alpha", number=1, seen=1)
    chat(page, "beta", number=2, seen=2)
    expect(regenerate).to_have_count(1)  # on the last reply only
    expect(replies(page).last.get_by_role("button", name="Regenerate this reply")).to_be_visible()
    old_reply = replies(page).last.get_attribute("data-id")

    regenerate.click()
    expect(replies(page).last).not_to_have_attribute("data-id", old_reply)
    # The assistant sees "alpha" and "beta" once each: the old answer is not in its memory.
    reply_is(page, 2, echo("beta", 2))
    expect(page.locator("#transcript li.message.user")).to_have_count(2)
    expect(message_box(page)).to_be_focused()
    expect(regenerate).to_have_count(1)
    chat(page, "gamma", number=3, seen=3)
    shot(page, "20-regenerate")

    # The server's transcript agrees, and the form does it without JavaScript too.
    conversation_url = page.url
    page.reload()
    expect(page.locator("#transcript li.message")).to_have_count(6)
    plain = new_page(java_script_enabled=False)
    plain.context.add_cookies(page.context.cookies())  # the same visitor
    plain.goto(conversation_url)
    old_reply = replies(plain).last.get_attribute("data-id")
    plain.get_by_role("button", name="Regenerate this reply").click()
    expect(replies(plain).last).not_to_have_attribute("data-id", old_reply)
    reply_is(plain, 3, echo("gamma", 3))
    expect(plain.locator("#transcript li.message")).to_have_count(6)
    shot(plain, "21-regenerate-no-javascript")


def test_edit_a_message_in_place_or_cancel_with_escape(new_page, site):
    page = new_page()
    page.goto(site.url)
    chat(page, "alpha", number=1, seen=1)
    chat(page, "betta", number=2, seen=2)
    user_messages = page.locator("#transcript li.message.user")
    edit = page.get_by_role("button", name="Edit your message")
    expect(edit).to_have_count(2)  # on each of the user's messages
    last_edit = user_messages.last.get_by_role("button", name="Edit your message")

    last_edit.click()
    box = page.get_by_role("textbox", name="Edit your message")
    expect(box).to_be_focused()
    expect(box).to_have_value("betta")
    expect(page.get_by_role("button", name="Regenerate this reply")).to_have_count(0)
    expect(edit).to_have_count(0), "one edit at a time"
    expect(page.locator(".editor-note")).to_have_count(0), "only its own reply goes"
    box.press("Escape")
    expect(box).to_have_count(0)
    expect(user_messages.last.locator(".body")).to_have_text("betta")
    expect(last_edit).to_be_focused()

    last_edit.click()
    box.fill("beta")
    shot(page, "22-edit")
    box.press("Enter")
    # The assistant sees "alpha" and "beta": the typo and its answer are not in its memory.
    reply_is(page, 2, echo("beta", 2))
    expect(user_messages).to_have_count(2)
    expect(user_messages.last.locator(".body")).to_have_text("beta")
    page.reload()
    expect(user_messages.last.locator(".body")).to_have_text("beta")
    expect(page.locator("#transcript li.message")).to_have_count(4)

    # An earlier message: the box says what goes with the old answer, and it all goes.
    user_messages.first.get_by_role("button", name="Edit your message").click()
    expect(box).to_have_value("alpha")
    expect(box).to_have_accessible_description("Sending replaces the 3 messages after this one.")
    box.fill("first")
    shot(page, "22-edit-earlier")
    box.press("Enter")
    reply_is(page, 1, echo("first", 1))
    expect(page.locator("#transcript li.message")).to_have_count(2)
    chat(page, "second", number=2, seen=2)  # the memory holds "first" only
    page.reload()
    expect(user_messages.locator(".body")).to_have_text(["first", "second"])

    # Without JavaScript, each Edit leads to a page with the message in a box.
    plain = new_page(java_script_enabled=False)
    plain.context.add_cookies(page.context.cookies())
    plain.goto(page.url)
    plain.get_by_role("link", name="Edit your message").first.click()
    expect(plain.get_by_role("textbox", name="Message")).to_have_value("first")
    expect(plain.get_by_text("the place of the 3 messages after it")).to_be_visible()
    plain.get_by_role("textbox", name="Message").fill("gamma")
    plain.get_by_role("button", name="Send").click()
    reply_is(plain, 1, echo("gamma", 1))
    expect(plain.locator("#transcript li.message")).to_have_count(2)


def test_a_visitor_creates_an_account_from_the_header_and_keeps_the_conversation(new_page, site):
    page = new_page()
    page.goto(site.url)
    chat(page, "before my account", number=1, seen=1)
    conversation_url = page.url

    page.get_by_role("link", name="Create account").click()
    page.get_by_label("Username").fill("pia")
    page.get_by_label("Password", exact=True).fill("a-long-pw-for-pia")
    page.get_by_label("Password confirmation").fill("a-long-pw-for-pio")
    page.get_by_role("button", name="Create account").click()
    expect(page.get_by_role("alert")).to_contain_text("The two password fields didn\u2019t match.")
    expect(page.get_by_label("Username")).to_have_value("pia")
    expect(page.get_by_label("Password confirmation")).to_be_focused()
    shot(page, "24-sign-up-refused")
    page.get_by_label("Password", exact=True).fill("a-long-pw-for-pia")
    page.get_by_label("Password confirmation").fill("a-long-pw-for-pia")
    page.get_by_role("button", name="Create account").click()

    # Signed in as the new account, with the conversation and the assistant's memory of it.
    expect(page.get_by_role("link", name="pia")).to_be_visible()
    expect(page.get_by_role("link", name="Create account")).to_have_count(0)
    expect(page.locator("#conversation-list a")).to_have_text(["before my account"])
    page.locator("#conversation-list a").click()
    expect(page).to_have_url(conversation_url)
    chat(page, "now with an account", number=2, seen=2)


def test_an_account_deleted_from_its_password_page_leaves_nothing_behind(new_page, site, workdir):
    site_shell(workdir, "User.objects.create_user('rita', password='pw-rita-12345')")
    page = new_page()
    sign_in(page, site, "rita", "pw-rita-12345")
    chat(page, "something to forget", number=1, seen=1)

    page.get_by_role("link", name="rita").click()
    page.get_by_role("link", name="Delete your account").click()
    expect(page.get_by_role("heading", name="Delete your account?")).to_be_visible()
    expect(page.get_by_text("your 1 conversation: its transcript and")).to_be_visible()
    page.get_by_label("Your password").fill("not my password")
    page.get_by_role("button", name="Delete my account").click()
    expect(page.get_by_role("alert")).to_have_text("That is not your password.")
    page.get_by_label("Your password").fill("pw-rita-12345")
    shot(page, "25-delete-account")
    page.get_by_role("button", name="Delete my account").click()

    expect(page.locator(".banner.success")).to_contain_text("Your account was deleted")
    expect(page.get_by_role("link", name="Sign in")).to_be_visible()
    expect(page.locator("#conversation-list a")).to_have_count(0)
    sign_in(page, site, "rita", "pw-rita-12345")
    expect(page.get_by_role("alert")).to_contain_text("didn't match")


def test_a_forgotten_password_is_set_anew_from_the_link_in_the_email(new_page, site, workdir):
    def mailed_links(path: str) -> list[str]:
        mails = "".join(p.read_text() for p in sorted(mailbox(workdir, "fast").glob("*.log")))
        assert "To: uma@example.com" in mails, mails
        return re.findall(rf"{re.escape(site.url)}{path}\S+/", mails)

    # The address given at sign-up is the account's once the link mailed to it is opened.
    page = new_page()
    page.goto(f"{site.url}/accounts/signup/")
    page.get_by_label("Username").fill("uma")
    page.get_by_label("E-mail address (optional)").fill("uma@example.com")
    page.get_by_label("Password", exact=True).fill("a-long-pw-for-uma")
    page.get_by_label("Password confirmation").fill("a-long-pw-for-uma")
    page.get_by_role("button", name="Create account").click()
    expect(page.locator(".banner.success")).to_contain_text("We sent a link to uma@example.com")
    (confirm,) = mailed_links("/accounts/email/confirm/")
    mail_reader = new_page()  # opened from a mail program: another browser, not signed in
    mail_reader.goto(confirm)
    expect(mail_reader.get_by_role("heading", name="E-mail address confirmed")).to_be_visible()
    page.get_by_role("button", name="Sign out").click()

    page.goto(f"{site.url}/accounts/login/")
    page.get_by_role("link", name="Forgot your password?").click()
    page.get_by_label("E-mail address").fill("uma@example.com")
    page.get_by_role("button", name="Send the link").click()
    expect(page.get_by_role("heading", name="Check your e-mail")).to_be_visible()

    links = mailed_links("/accounts/reset/")
    assert len(links) == 1
    page.goto(links[0])
    expect(page.get_by_text("For the account uma.")).to_be_visible()
    page.get_by_label("New password", exact=True).fill("umas-new-pw-2026")
    page.get_by_label("New password confirmation").fill("umas-new-pw-2026")
    shot(page, "26-password-reset")
    page.get_by_role("button", name="Set password").click()
    expect(page.get_by_role("heading", name="Your new password is set")).to_be_visible()
    page.get_by_role("link", name="Back to your conversations").click()
    expect(page.get_by_role("link", name="uma")).to_be_visible()
    chat(page, "signed in again", number=1, seen=1)

    page.goto(links[0])
    expect(page.get_by_role("alert")).to_contain_text("has been used")


def test_download_saves_the_conversation_as_markdown(new_page, site):
    page = new_page()
    page.goto(site.url)
    download = page.get_by_role("link", name="Download", exact=True)
    expect(download).to_be_hidden(), "a new chat has nothing to save yet"
    chat(page, "keep this", number=1, seen=1)
    expect(download).to_be_visible()
    with page.expect_download() as saving:
        download.click()
    saved = saving.value
    assert saved.suggested_filename == "keep-this.md"
    document = Path(saved.path()).read_text(encoding="utf-8")
    assert document.startswith("# keep this\n")
    assert f"\n{echo('keep this', 1)}\n" in document

    page.get_by_role("link", name="New chat").click()
    expect(download).to_be_hidden()


def test_download_all_saves_every_conversation_in_one_zip(new_page, site):
    page = new_page()
    page.goto(site.url)
    download_all = page.get_by_role("link", name="Download all")
    expect(download_all).to_be_hidden(), "a new visitor has nothing to save yet"
    chat(page, "the first", number=1, seen=1)
    expect(download_all).to_be_visible()  # as the conversation is listed, without a reload
    page.get_by_role("link", name="New chat").click()
    chat(page, "the second", number=1, seen=1)
    with page.expect_download() as saving:
        download_all.click()
    saved = saving.value
    assert re.fullmatch(r"conversations-\d{4}-\d{2}-\d{2}\.zip", saved.suggested_filename)
    with zipfile.ZipFile(saved.path()) as archive:
        documents = [archive.read(name).decode() for name in archive.namelist()]
    assert [document.splitlines()[0] for document in documents] == ["# the first", "# the second"]
    assert f"\n{echo('the second', 1)}\n" in documents[1]

    def delete(title: str) -> None:
        page.get_by_role("button", name="Delete").click()
        page.get_by_role("dialog").get_by_role("button", name="Delete").click()
        expect(page.locator(".banner.success")).to_have_text(f"Deleted “{title}”.")

    delete("the second")
    expect(download_all).to_be_visible(), "the first is still there to save"
    page.get_by_role("link", name="the first").click()
    delete("the first")
    expect(download_all).to_be_hidden(), "nothing left to save"


def test_a_reply_rated_in_one_tab_shows_rated_in_every_tab(new_context, site):
    context = new_context()
    page = context.new_page()
    page.goto(site.url)
    chat(page, "how good is this?", number=1, seen=1)
    other = context.new_page()
    other.goto(page.url)
    reply_is(other, 1, echo("how good is this?", 1))

    bad = replies(page).first.get_by_role("button", name="Bad reply")
    expect(bad).to_have_attribute("aria-pressed", "false")
    bad.click()
    expect(bad).to_have_attribute("aria-pressed", "true")
    shot(page, "29-rated")
    other_bad = replies(other).first.get_by_role("button", name="Bad reply")
    expect(other_bad).to_have_attribute("aria-pressed", "true")
    replies(other).first.get_by_role("button", name="Good reply").click()
    expect(bad).to_have_attribute("aria-pressed", "false")
    expect(replies(page).first.get_by_role("button", name="Good reply")).to_have_attribute(
        "aria-pressed", "true"
    )
    page.reload()
    good = replies(page).first.get_by_role("button", name="Good reply")
    expect(good).to_have_attribute("aria-pressed", "true")
    good.click()
    expect(good).to_have_attribute("aria-pressed", "false")
    expect(replies(other).first.get_by_role("button", name="Good reply")).to_have_attribute(
        "aria-pressed", "false"
    )

    # A reply streamed into the page (not rendered by the server) is rated the same way.
    chat(page, "and this one?", number=2, seen=2)
    fresh = replies(page).nth(1).get_by_role("button", name="Good reply")
    fresh.click()
    expect(fresh).to_have_attribute("aria-pressed", "true")
    other.reload()
    expect(replies(other).nth(1).get_by_role("button", name="Good reply")).to_have_attribute(
        "aria-pressed", "true"
    )


def test_a_shared_link_opens_a_read_only_copy_for_anyone(new_context, site):
    owner = new_context(permissions=["clipboard-read", "clipboard-write"]).new_page()
    owner.goto(site.url)
    expect(owner.get_by_role("link", name="Share…")).to_be_hidden(), "nothing to share yet"
    chat(owner, "a question worth sharing", number=1, seen=1)
    conversation_url = owner.url
    owner.get_by_role("link", name="Share…").click()
    with owner.expect_navigation():  # its Copy link button works once the page's script runs
        owner.get_by_role("button", name="Create link").click()
    expect(owner.get_by_role("status")).to_contain_text("anyone with the link can read")
    owner.get_by_role("button", name="Copy link").click()
    expect(owner.get_by_role("button", name="Copied")).to_be_visible()
    link = owner.evaluate("navigator.clipboard.readText()")
    assert link == owner.get_by_label("Link").input_value() and "/s/" in link
    shot(owner, "27-share")

    reader = new_context().new_page()
    reader.goto(link)
    expect(reader.get_by_role("heading", name="a question worth sharing")).to_be_visible()
    expect(reader.get_by_role("list", name="Messages")).to_contain_text(
        echo("a question worth sharing", 1)
    )
    expect(reader.get_by_role("textbox")).to_have_count(0)
    shot(reader, "28-shared-copy")

    owner.goto(conversation_url)
    chat(owner, "not for the readers", number=2, seen=2)
    reader.reload()
    expect(reader.get_by_role("list", name="Messages")).not_to_contain_text("not for the readers")

    owner.get_by_role("link", name="Share…").click()
    owner.get_by_role("button", name="Stop sharing").click()
    expect(owner.get_by_role("button", name="Create link")).to_be_visible()
    reader.reload()
    expect(reader.get_by_role("heading", name="This link does not work")).to_be_visible()


def test_a_shared_copy_colours_code_as_the_chat_page_does(new_page, site):
    owner = new_page()
    owner.goto(site.url)
    say(owner, "Code:\n```python\nx = 'hi'\n```\nthanks")
    expect(replies(owner)).to_have_count(1)
    expect(replies(owner).locator(".hljs-string")).to_have_text("'hi'")
    owner.get_by_role("link", name="Share…").click()
    with owner.expect_navigation():
        owner.get_by_role("button", name="Create link").click()
    reader = new_page()
    reader.goto(owner.get_by_label("Link").input_value())
    reply = reader.locator("li.message.assistant .body")
    expect(reply.locator(".hljs-string")).to_have_text("'hi'")
    colour = "(node) => getComputedStyle(node).color"
    assert reply.locator(".hljs-string").evaluate(colour) != reply.locator("code").evaluate(colour)


def test_a_password_change_keeps_this_browser_signed_in_and_signs_out_the_others(
    new_context, site, workdir
):
    site_shell(workdir, "User.objects.create_user('ivy', password='pw-ivy-12345')")

    def signed_in_tab(context):
        tab = context.new_page()
        sign_in(tab, site, "ivy", "pw-ivy-12345")
        expect(tab.get_by_role("button", name="Sign out")).to_be_visible()
        return tab

    laptop = new_context()
    tab = signed_in_tab(laptop)
    chat(tab, "on my laptop", number=1, seen=1)
    conversation_url = tab.url
    message_box(tab).fill("a draft")
    phone = signed_in_tab(new_context())

    settings_tab = laptop.new_page()
    settings_tab.goto(site.url)
    settings_tab.get_by_role("link", name="ivy").click()
    settings_tab.get_by_label("Old password").fill("pw-ivy-12345")
    settings_tab.get_by_label("New password", exact=True).fill("a-new-pw-for-ivy-42")
    settings_tab.get_by_label("New password confirmation").fill("a-new-pw-for-ivy-42")
    shot(settings_tab, "23-password-change")
    settings_tab.get_by_role("button", name="Change password").click()
    expect(settings_tab.get_by_role("heading", name="Password changed")).to_be_visible()

    # This browser's chat tab reloads by itself, still signed in, with its draft.
    expect(tab).to_have_url(conversation_url)
    expect(tab.get_by_role("button", name="Sign out")).to_be_visible()
    expect(message_box(tab)).to_have_value("a draft")
    message_box(tab).fill("")
    chat(tab, "still signed in", number=2, seen=2)
    # The phone is signed out at once.
    expect(phone.get_by_role("link", name="Sign in")).to_be_visible()
