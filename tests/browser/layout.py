"""Does a console page fit its screen? Boxes collected in the page, checked here.

``problems(page)`` lists what a user would see as broken, at the page's current viewport:
the document wider than the screen (the whole page scrolls sideways), headings, controls
and cards that overlap one another, things that stick out of their card (a wide table
must scroll inside its own box instead), and touch targets under ``MIN_TAP`` px tall.
"""

from typing import Any, Dict, List

MIN_TAP = 40  # px: a finger's tap lands on the control it means
SLACK = 1.0  # px: sub-pixel rounding is not an overlap

# What is collected (visible ones only), by kind; `#toasts` float over everything by design.
COLLECT = r"""
() => {
  const kinds = [
    ["heading", "h1, h2, h3"],
    ["control", "button, select, textarea, input:not([type=hidden]), label, "
              + "a.button, a.brand, nav a, .list a, summary, .drop, #key-form"],
    ["card", ".card"],
    ["block", "table, svg, img, video, canvas, .bars, .progress, .queue, .grid, .keys"],
  ];
  const seen = new Map();
  const items = [];
  for (const [kind, selector] of kinds) {
    for (const node of document.querySelectorAll(selector)) {
      if (seen.has(node) || node.closest("#toasts")) continue;
      const r = node.getBoundingClientRect();
      // checkVisibility: false inside a closed <details> too, whose content still has boxes.
      if (r.width < 1 || r.height < 1 || !node.checkVisibility({visibilityProperty: true})) continue;
      seen.set(node, items.length);
      items.push({node, kind});
    }
  }
  // The part of a box that shows: cut by every ancestor that clips (a scroll box, say).
  function visible(node) {
    const r = node.getBoundingClientRect();
    let box = {left: r.left, top: r.top, right: r.right, bottom: r.bottom};
    for (let up = node.parentElement; up && up !== document.body; up = up.parentElement) {
      const style = getComputedStyle(up);
      if (style.overflowX === "visible" && style.overflowY === "visible") continue;
      const c = up.getBoundingClientRect();
      box = {left: Math.max(box.left, c.left), top: Math.max(box.top, c.top),
             right: Math.min(box.right, c.right), bottom: Math.min(box.bottom, c.bottom)};
    }
    return box;
  }
  function describe(node) {
    let name = node.tagName.toLowerCase();
    if (node.id) name += "#" + node.id;
    else if (typeof node.className === "string" && node.className.trim())
      name += "." + node.className.trim().split(/\s+/).join(".");
    const text = (node.innerText || node.value || node.getAttribute("aria-label") || "")
      .trim().split("\n")[0];
    return text ? name + " '" + text.slice(0, 30) + "'" : name;
  }
  function tapArea(node) {
    const holder = node.closest("label");  // a checkbox is tapped through its label
    return (holder || node).getBoundingClientRect().height;
  }
  const out = items.map(({node, kind}) => {
    const ancestors = [];
    for (let up = node.parentElement; up; up = up.parentElement) {
      if (seen.has(up)) ancestors.push(seen.get(up));
    }
    const card = node.parentElement ? node.parentElement.closest(".card") : null;
    const tappable = node.matches("button, select, textarea, a.button, nav a, summary, "
      + "input, .list a");
    return {
      kind, name: describe(node), box: visible(node), ancestors,
      card: card && seen.has(card) ? seen.get(card) : null,
      tap: tappable && !node.disabled ? tapArea(node) : null,
    };
  });
  return {width: window.innerWidth, scrollWidth: document.documentElement.scrollWidth, items: out};
}
"""


def _overlap(a: Dict[str, float], b: Dict[str, float]) -> bool:
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > SLACK
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > SLACK
    )


def _inside(inner: Dict[str, float], outer: Dict[str, float]) -> bool:
    return (
        inner["left"] >= outer["left"] - SLACK
        and inner["right"] <= outer["right"] + SLACK
        and inner["top"] >= outer["top"] - SLACK
        and inner["bottom"] <= outer["bottom"] + SLACK
    )


def _empty(box: Dict[str, float]) -> bool:
    return box["right"] - box["left"] < SLACK or box["bottom"] - box["top"] < SLACK


def problems(page: Any) -> List[str]:
    """What does not fit on ``page`` as it is now (an empty list when all is well)."""
    found = page.evaluate(COLLECT)
    items: List[Dict[str, Any]] = found["items"]
    out: List[str] = []
    if found["scrollWidth"] > found["width"]:
        out.append("the page is {}px wide on a {}px screen".format(found["scrollWidth"], found["width"]))
    for index, item in enumerate(items):
        box = item["box"]
        if _empty(box):
            continue  # scrolled out of its own box: nothing of it shows
        if box["right"] > found["width"] + SLACK or box["left"] < -SLACK:
            where = "({:.0f}..{:.0f}px)".format(box["left"], box["right"])
            out.append("{} runs off the screen {}".format(item["name"], where))
        card = item["card"]
        if card is not None and not _inside(box, items[card]["box"]):
            out.append("{} sticks out of its card {}".format(item["name"], items[card]["name"]))
        if item["tap"] is not None and item["tap"] < MIN_TAP - SLACK:
            out.append("{} is {:.0f}px tall, under {}px to tap".format(item["name"], item["tap"], MIN_TAP))
        for other_index in range(index):
            other = items[other_index]
            if other_index in item["ancestors"] or index in other["ancestors"]:
                continue  # a card holds its heading; a label holds its checkbox
            if _overlap(box, other["box"]):
                out.append("{} overlaps {}".format(item["name"], other["name"]))
    return out


def assert_fits(page: Any, where: str) -> None:
    found = problems(page)
    assert not found, "{} at {}px:\n  {}".format(
        where, page.viewport_size["width"], "\n  ".join(sorted(set(found)))
    )
