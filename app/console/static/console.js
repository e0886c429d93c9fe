/* Poets console: what every page shares. Plain JavaScript, no dependencies.
 *
 * Poets.api(method, path, body) calls the HTTP API (with the X-API-Key header once a key is
 * saved); Poets.el builds elements; Poets.bars, Poets.lineChart and Poets.confusion draw the
 * label scores, the training curves (inline SVG) and a confusion matrix.
 */
(function () {
  "use strict";

  var body = document.body;
  var ROOT = body.getAttribute("data-root") || "";
  var KEY = "poets.apiKey";
  var SVG = "http://www.w3.org/2000/svg";

  function getKey() {
    try { return window.localStorage.getItem(KEY) || ""; } catch (e) { return ""; }
  }

  function setKey(value) {
    try {
      if (value) { window.localStorage.setItem(KEY, value); } else { window.localStorage.removeItem(KEY); }
    } catch (e) { /* storage off: the key lasts for this page only */ }
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      var value = attrs[name];
      if (value === null || value === undefined || value === false) { return; }
      if (name === "text") { node.textContent = value; }
      else if (name.slice(0, 2) === "on") { node.addEventListener(name.slice(2), value); }
      else if (name === "class") { node.className = value; }
      else { node.setAttribute(name, value === true ? "" : value); }
    });
    (children || []).forEach(function (child) {
      if (child === null || child === undefined) { return; }
      node.appendChild(typeof child === "string" ? document.createTextNode(child) : child);
    });
    return node;
  }

  function svg(tag, attrs, text) {
    var node = document.createElementNS(SVG, tag);
    Object.keys(attrs || {}).forEach(function (name) { node.setAttribute(name, attrs[name]); });
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function clear(node) {
    while (node.firstChild) { node.removeChild(node.firstChild); }
    return node;
  }

  function toast(message, kind) {
    var box = document.getElementById("toasts");
    var note = el("div", {"class": "toast" + (kind ? " " + kind : ""), role: "status", text: message});
    box.appendChild(note);
    window.setTimeout(function () { if (note.parentNode) { box.removeChild(note); } },
                      kind === "error" ? 8000 : 3500);
  }

  function askForKey(message) {
    var form = document.getElementById("key-form");
    if (!form) { return; }
    form.classList.add("needed");
    form.querySelector("input").focus();
    if (message) { toast(message, "error"); }
  }

  /* With keys on, image data needs the key too, and <img> cannot send headers: the key is
   * traded for an HttpOnly image cookie (POST /auth/image-cookie), renewed at half its
   * life. API calls wait for it, so the images they lead to find it set. */
  var imageCookie = Promise.resolve();
  var renewal = null;

  function renewImageCookie() {
    var keysOn = body.getAttribute("data-keys-on") === "true";
    var key = getKey();
    if (renewal) { window.clearTimeout(renewal); renewal = null; }
    if (!keysOn) { return Promise.resolve(); }
    var request = key ? {method: "POST", headers: {"X-API-Key": key}} : {method: "DELETE"};
    return window.fetch(ROOT + "/auth/image-cookie", request)
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (answer) {
        if (answer && answer.expires_in) {
          renewal = window.setTimeout(renewImageCookie, answer.expires_in * 500);
        }
      }, function () { /* offline: the API calls will say so */ });
  }

  /* Call the API: resolves with the parsed body, rejects with an Error carrying status,
   * code and the API's detail (its message). */
  function api(method, path, payload) {
    return imageCookie.then(function () { return send(method, path, payload); });
  }

  function send(method, path, payload) {
    var headers = {"X-Poets-Client": "console"};  // jobs it starts say "console"
    var key = getKey();
    if (key) { headers["X-API-Key"] = key; }
    var data = payload;
    var isForm = typeof FormData !== "undefined" && payload instanceof FormData;
    var isBlob = typeof Blob !== "undefined" && payload instanceof Blob;
    if (payload !== undefined && payload !== null && !isForm && !isBlob) {
      headers["Content-Type"] = "application/json";
      data = JSON.stringify(payload);
    }
    if (isBlob && payload.type) { headers["Content-Type"] = payload.type; }
    return window.fetch(ROOT + path, {method: method, headers: headers, body: data})
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        var parsed = type.indexOf("json") >= 0 ? response.json() : response.text();
        return parsed.then(function (content) {
          if (response.ok) { return content; }
          var detail = content && content.detail ? content.detail : "HTTP " + response.status;
          var error = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
          error.status = response.status;
          error.code = content && content.error;
          if (response.status === 401) { askForKey(); }
          throw error;
        });
      });
  }

  function fail(error) {
    toast(error && error.message ? error.message : String(error), "error");
  }

  function pct(value, digits) {
    if (value === null || value === undefined || isNaN(value)) { return "–"; }
    return (value * 100).toFixed(digits === undefined ? 1 : digits) + "%";
  }

  function query(name) {
    var match = new RegExp("[?&]" + name + "=([^&]*)").exec(window.location.search);
    return match ? decodeURIComponent(match[1].replace(/\+/g, " ")) : null;
  }

  function setQuery(name, value) {
    var params = new URLSearchParams(window.location.search);
    if (value === null || value === undefined || value === "") { params.delete(name); } else { params.set(name, value); }
    var search = params.toString();
    window.history.replaceState(null, "", window.location.pathname + (search ? "?" + search : ""));
  }

  function path() {
    return Array.prototype.map.call(arguments, function (part) { return encodeURIComponent(part); }).join("/");
  }

  /* Top-k scores as horizontal bars. */
  function bars(labels) {
    var box = el("div", {"class": "bars"});
    (labels || []).forEach(function (entry) {
      var width = Math.max(0, Math.min(100, entry.score * 100));
      box.appendChild(el("div", {"class": "bar", title: entry.label + ": " + pct(entry.score, 2)}, [
        el("span", {"class": "bar-label", text: entry.label}),
        el("span", {"class": "bar-track"}, [el("span", {"class": "bar-fill", style: "width:" + width.toFixed(1) + "%"})]),
        el("span", {"class": "bar-value", text: pct(entry.score)})
      ]));
    });
    return box;
  }

  /* A line chart as inline SVG. series: [{name, color, points: [[x, y|null], ...]}];
   * options: {title, yMin, yMax, format, xFormat, xUnit}. Nulls break a line. */
  function lineChart(series, options) {
    options = options || {};
    var width = 460, height = 220, left = 44, right = 12, top = 24, bottom = 28;
    var xs = [], ys = [];
    series.forEach(function (line) {
      line.points.forEach(function (p) { if (p[1] !== null && p[1] !== undefined) { xs.push(p[0]); ys.push(p[1]); } });
    });
    var chart = svg("svg", {"class": "chart", viewBox: "0 0 " + width + " " + height, role: "img",
                           "aria-label": options.title || "chart"});
    chart.appendChild(svg("text", {x: left, y: 15, "font-weight": "600"}, options.title || ""));
    var x0 = xs.length ? Math.min.apply(null, xs) : 0, x1 = xs.length ? Math.max.apply(null, xs) : 1;
    if (x1 === x0) { x1 = x0 + 1; }
    var y0 = options.yMin !== undefined ? options.yMin : (ys.length ? Math.min.apply(null, ys) : 0);
    var y1 = options.yMax !== undefined ? options.yMax : (ys.length ? Math.max.apply(null, ys) : 1);
    if (y1 === y0) { y1 = y0 + 1; }
    var format = options.format || function (v) { return v.toFixed(2); };
    function sx(v) { return left + (v - x0) / (x1 - x0) * (width - left - right); }
    function sy(v) { return top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom); }
    for (var i = 0; i <= 4; i++) {
      var v = y0 + (y1 - y0) * i / 4;
      chart.appendChild(svg("line", {"class": "gridline", x1: left, x2: width - right, y1: sy(v), y2: sy(v)}));
      chart.appendChild(svg("text", {x: left - 6, y: sy(v) + 4, "text-anchor": "end"}, format(v)));
    }
    chart.appendChild(svg("line", {"class": "axis", x1: left, x2: width - right, y1: height - bottom, y2: height - bottom}));
    var xFormat = options.xFormat || function (v) { return String(Math.round(v)); };
    chart.appendChild(svg("text", {x: left, y: height - 10}, xFormat(x0)));
    chart.appendChild(svg("text", {x: width - right, y: height - 10, "text-anchor": "end"},
                          xFormat(x1) + (options.xUnit === undefined ? " steps" : options.xUnit)));
    series.forEach(function (line) {
      var run = [];
      function flush() {
        if (run.length === 1) {  // a lone point draws no line: a dot instead
          var xy = run[0].split(",");
          chart.appendChild(svg("circle", {cx: xy[0], cy: xy[1], r: 3, fill: line.color, "data-series": line.name}));
        } else if (run.length) {
          chart.appendChild(svg("polyline", {points: run.join(" "), stroke: line.color, "data-series": line.name}));
        }
        run = [];
      }
      line.points.forEach(function (p) {
        if (p[1] === null || p[1] === undefined) { flush(); return; }
        run.push(sx(p[0]).toFixed(1) + "," + sy(p[1]).toFixed(1));
      });
      flush();
    });
    var legend = el("div", {"class": "legend"}, series.map(function (line) {
      return el("span", {}, [el("i", {style: "background:" + line.color}), line.name]);
    }));
    return el("figure", {"class": "chart-box", style: "margin:0"}, [chart, legend]);
  }

  /* "88.1% (95% CI 77.2–93.8%, N=42)": an accuracy with its N and 95% Wilson interval. */
  function accuracy(value, n, interval) {
    if (value === null || value === undefined) { return "–"; }
    if (interval && interval[0] !== null && interval[1] !== null) {
      return pct(value) + " (95% CI " + pct(interval[0]) + "–" + pct(interval[1]) + ", N=" + n + ")";
    }
    return n ? pct(value) + " (N=" + n + ")" : pct(value);
  }

  /* Per-class precision and recall with their N and intervals, beside a confusion matrix. */
  function perClass(rows) {
    var head = el("tr", {}, ["label", "precision", "recall"].map(function (t) { return el("th", {text: t}); }));
    var body = rows.map(function (row) {
      return el("tr", {}, [el("th", {"class": "rowhead", text: row.label}),
                           el("td", {text: accuracy(row.precision, row.precision_n, row.precision_interval)}),
                           el("td", {text: accuracy(row.recall, row.recall_n, row.recall_interval)})]);
    });
    return el("table", {"class": "per-class"}, [el("thead", {}, [head]), el("tbody", {}, body)]);
  }

  /* A confusion matrix (rows: truth, columns: prediction), shaded by row share. */
  function confusion(labels, matrix) {
    var head = el("tr", {}, [el("th", {"class": "rowhead", text: "truth \u2193 / predicted \u2192"})]
      .concat(labels.map(function (label) { return el("th", {text: label}); })));
    var rows = matrix.map(function (row, r) {
      var total = row.reduce(function (a, b) { return a + b; }, 0) || 1;
      return el("tr", {}, [el("th", {"class": "rowhead", text: labels[r]})].concat(row.map(function (count, c) {
        var share = count / total;
        var color = r === c ? "rgba(46,125,79," + (0.12 + 0.6 * share).toFixed(2) + ")"
                            : (count ? "rgba(179,38,30," + (0.12 + 0.6 * share).toFixed(2) + ")" : "transparent");
        return el("td", {style: "background:" + color, text: String(count)});
      })));
    });
    return el("table", {"class": "confusion"}, [el("thead", {}, [head]), el("tbody", {}, rows)]);
  }

  function badge(text, kind) {
    return el("span", {"class": "badge " + (kind || text), text: text});
  }

  function listOf(content, key) {
    if (Array.isArray(content)) { return content; }
    return (content && content[key]) || [];
  }

  function setUpKeyForm() {
    var form = document.getElementById("key-form");
    if (!form) { return; }
    var input = form.querySelector("input");
    input.value = getKey();
    if (!input.value) { form.classList.add("needed"); }
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      setKey(input.value.trim());
      imageCookie = renewImageCookie();
      form.classList.toggle("needed", !input.value.trim());
      toast(input.value.trim() ? "API key saved in this browser." : "API key removed.");
    });
  }

  setUpKeyForm();
  imageCookie = renewImageCookie();

  window.Poets = {
    api: api, el: el, clear: clear, toast: toast, fail: fail, pct: pct, query: query,
    setQuery: setQuery, path: path, bars: bars, lineChart: lineChart, confusion: confusion,
    accuracy: accuracy, perClass: perClass,
    badge: badge, listOf: listOf, getKey: getKey, setKey: setKey, root: ROOT,
    defaultModel: body.getAttribute("data-default-model") || "default",
    keysOn: body.getAttribute("data-keys-on") === "true"
  };
}());
