# An HTML checker that shares no code with the tool: Python's own parser.
# Reads an HTML file, checks that every element is closed in order, that
# nothing is loaded from outside (no script, no external src/href), and
# prints JSON: the count of each tag, the stage bars by their data-stage,
# and the circles of class "point" in each <section id=...>.
import json
import sys
from html.parser import HTMLParser

VOID = {"meta", "br", "img", "input", "link", "hr", "area", "base", "col",
        "embed", "source", "track", "wbr"}
# SVG elements written self-closed (<line/>) arrive through handle_startendtag.


class Check(HTMLParser):
    def __init__(self):
        super().__init__()
        self.stack = []
        self.tags = {}
        self.stage_bars = []
        self.points = {}
        self.section = None
        self.errors = []

    def _count(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a and "://" in (a[key] or ""):
                self.errors.append(f"external {key}: {a[key]}")
        if tag == "script":
            self.errors.append("a <script> element")
        if tag == "rect" and a.get("class") == "stage-bar":
            self.stage_bars.append(a.get("data-stage"))
        if tag == "circle" and a.get("class") == "point":
            key = self.section or ""
            self.points[key] = self.points.get(key, 0) + 1
        if tag == "section":
            self.section = a.get("id")

    def handle_starttag(self, tag, attrs):
        self._count(tag, attrs)
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self._count(tag, attrs)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag == "section":
            self.section = None


c = Check()
with open(sys.argv[1], encoding="utf-8") as f:
    c.feed(f.read())
c.close()
if c.stack:
    c.errors.append(f"unclosed: {c.stack}")
print(json.dumps({"errors": c.errors, "tags": c.tags,
                  "stage_bars": c.stage_bars, "points": c.points}))
