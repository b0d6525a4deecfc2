"""An annotator in a real browser: keyboard and drag ranking, harmful marks, undo/redo, finishing a round."""
from pathlib import Path

import pytest

from evalsite.humaneval.models import Assignment, EvalRound, Ranking
from evalsite.models import Sample
from tests.humaneval_demo import make_annotators, make_round

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SCREENSHOTS = Path(__file__).resolve().parent.parent / "var" / "screenshots"


def policy_of_label(a):
    names = {s.pk: s.policy.name for s in Sample.objects.filter(pk__in=a.order).select_related("policy")}
    return {label: names[sid] for label, sid in zip(a.labels, a.order)}


def current_assignment(user):
    return Assignment.objects.filter(annotator=user, status=Assignment.Status.LEASED).order_by("-id").first()


def stored(a):
    """{policy name: (rank, harmless)} of the live ranking of assignment ``a``."""
    r = Ranking.objects.get(assignment=a, withdrawn_at__isnull=True)
    return {x.sample.policy.name: (x.rank, x.harmless) for x in r.responses.select_related("sample__policy")}


def expect(a, by_label):
    pol = policy_of_label(a)
    return {pol[label]: value for label, value in by_label.items()}


def layout_shift(page):
    return page.evaluate("""() => new Promise(resolve => {
        let cls = 0;
        new PerformanceObserver(list => { for (const e of list.getEntries()) if (!e.hadRecentInput) cls += e.value; })
          .observe({type: "layout-shift", buffered: true});
        setTimeout(() => resolve(cls), 400);
    })""")


PLACE_NAMES = {1: "1st", 2: "2nd", 3: "3rd"}


def drag(page, label, place):
    """Drag response ``label`` from the pool to ``place`` with the mouse, as a person would; a drop
    that SortableJS did not register (a too-fast pointer) is tried again, up to three times."""
    badge = f'[data-badge-for="{label}"]'
    for _ in range(3):
        s = page.locator(f'#he-pool .he-chip[data-label="{label}"]').bounding_box()
        t = page.locator(f'.he-slot-drop[data-place="{place}"]').bounding_box()
        page.mouse.move(s["x"] + s["width"] / 2, s["y"] + s["height"] / 2)
        page.mouse.down()
        for i in range(1, 11):
            page.mouse.move(s["x"] + (t["x"] - s["x"]) * i / 10 + s["width"] / 2,
                            s["y"] + (t["y"] - s["y"]) * i / 10 + s["height"] / 2)
            page.wait_for_timeout(20)
        page.mouse.move(t["x"] + t["width"] / 2, t["y"] + t["height"] / 2)
        page.mouse.up()
        try:
            page.wait_for_function(f"document.querySelector('{badge}').textContent.trim() === "
                                   f"'{PLACE_NAMES[place]}'", timeout=3000)
            return
        except Exception:
            continue
    raise AssertionError(f"dragging {label} to place {place} did not rank it")


def test_annotator_ranks_by_keyboard_and_drag_marks_harmful_undoes_and_finishes(live_server, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    (user,) = make_annotators(1, prefix="ann", password="pw-annotator-1")
    rnd = make_round(n_prompts=3, overlap=1, question=EvalRound.Question.BOTH, task_slug="harmless",
                     title="Harmless dialogue, round 1", policy_names=("pol-sft", "pol-rlhf", "pol-rlaif"))
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(live_server.url + "/login/")
    page.fill("#id_username", "ann0")
    page.fill("#id_password", "pw-annotator-1")
    page.keyboard.press("Enter")
    page.wait_for_url(live_server.url + "/")
    assert "0 / 3" in page.inner_text(".he-rounds")
    page.get_by_role("link", name="Start").click()
    page.wait_for_selector("#he-answer")
    assert layout_shift(page) < 0.02
    page.screenshot(path=str(SCREENSHOTS / "item-wide.png"))  # what the annotator sees first

    # Item 1, keyboard only: A → 1st, (B picked next) → 3rd, (C) → 2nd; B harmful, A and C harmless.
    a1 = current_assignment(user)
    page.locator("body").focus()
    for key in ["1", "3", "2", "a", "h", "b", "x", "c", "h"]:
        page.keyboard.press(key)
    assert page.inner_text('[data-badge-for="B"]') == "3rd"
    assert page.input_value('select[name="rank_C"]') == "2"
    page.set_viewport_size({"width": 1400, "height": 1300})
    page.screenshot(path=str(SCREENSHOTS / "item-wide-answered.png"), full_page=True)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#he-progress-text') && "
                           "document.querySelector('#he-progress-text').textContent.startsWith('1 / 3')")
    assert stored(a1) == expect(a1, {"A": (1, True), "B": (3, False), "C": (2, True)})

    # Item 2, mouse: drag C to 1st, A to 2nd, B to 3rd; mark by clicking; submit with the button.
    a2 = current_assignment(user)
    assert a2.pk != a1.pk
    drag(page, "C", 1)
    drag(page, "A", 2)
    drag(page, "B", 3)
    assert page.inner_text('[data-badge-for="C"]') == "1st"
    assert page.inner_text('[data-badge-for="A"]') == "2nd"
    assert page.inner_text('[data-badge-for="B"]') == "3rd"
    for label, choice in [("A", "Harmless"), ("B", "Harmless"), ("C", "Harmful")]:
        page.locator(f"#he-resp-{label} .he-harm").get_by_text(choice, exact=True).click()
    page.fill("textarea[name=comment]", "C gives dangerous advice")
    page.click("#he-submit")
    page.wait_for_function("document.querySelector('#he-progress-text').textContent.startsWith('2 / 3')")
    assert stored(a2) == expect(a2, {"A": (2, True), "B": (3, True), "C": (1, False)})

    # Undo item 2, then redo it by keyboard: the old answer is pre-filled; move B to 1st (swaps with C).
    page.click("#he-undo")
    page.wait_for_function("document.querySelector('#he-progress-text').textContent.startsWith('1 / 3')")
    assert page.input_value('select[name="rank_C"]') == "1"
    assert page.input_value("textarea[name=comment]") == "C gives dangerous advice"
    page.locator("body").focus()
    page.keyboard.press("b")
    page.keyboard.press("1")
    assert page.inner_text('[data-badge-for="C"]') == "3rd"
    page.keyboard.press("Enter")
    page.wait_for_function("document.querySelector('#he-progress-text').textContent.startsWith('2 / 3')")
    assert stored(a2) == expect(a2, {"A": (2, True), "B": (1, True), "C": (3, False)})
    assert Ranking.objects.filter(assignment=a2).count() == 2  # the withdrawn one is kept

    # Item 3: an incomplete answer is stopped in the page; then finish by keyboard.
    a3 = current_assignment(user)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(200)
    page.screenshot(path=str(SCREENSHOTS / "item-narrow.png"), full_page=True)
    page.locator("body").focus()
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    assert "Rank B, C first." in page.inner_text("#he-status")
    for key in ["1", "3", "a", "h", "b", "h", "c", "x"]:
        page.keyboard.press(key)
    page.keyboard.press("Enter")
    page.wait_for_selector(".he-done")
    assert "All done" in page.inner_text("h1")
    assert stored(a3) == expect(a3, {"A": (2, True), "B": (1, True), "C": (3, False)})
    assert Ranking.objects.filter(withdrawn_at__isnull=True).count() == 3
    assert all(r.time_on_page_ms and r.time_on_page_ms > 0 for r in Ranking.objects.all())
    assert "Chrome" in Ranking.objects.first().user_agent
    assert errors == []


def test_item_page_at_200_percent_zoom_reflows_without_horizontal_scrolling(live_server, browser, client):
    (user,) = make_annotators(1, prefix="zoom", password="pw-zoom")
    make_round(n_prompts=1, overlap=1, question=EvalRound.Question.BOTH, task_slug="summarization",
               title="Summaries")
    # 200% zoom of a 1280×800 window = a 640×400 CSS-pixel viewport at device scale 2.
    ctx = browser.new_context(viewport={"width": 640, "height": 400}, device_scale_factor=2)
    page = ctx.new_page()
    page.goto(live_server.url + "/login/")
    page.fill("#id_username", "zoom0")
    page.fill("#id_password", "pw-zoom")
    page.keyboard.press("Enter")
    page.wait_for_url(live_server.url + "/")
    page.get_by_role("link", name="Start").click()
    page.wait_for_selector("#he-answer")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    boxes = [page.locator(f"#he-resp-{x}").bounding_box() for x in "ABC"]
    assert boxes[0]["y"] < boxes[1]["y"] < boxes[2]["y"]  # stacked, not squeezed side by side
    assert page.locator(".he-post-title").is_visible()
    page.screenshot(path=str(SCREENSHOTS / "item-zoom200.png"), full_page=True)
    ctx.close()
