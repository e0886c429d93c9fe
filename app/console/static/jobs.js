/* Jobs page: start a retrain on a dataset, follow it live (progress, curves), then its
 * confusion matrix and misclassified test images. The retrain options and their defaults
 * come from the API's own description of POST /retrain (/openapi.json). */
(function () {
  "use strict";
  var P = window.Poets, el = P.el;
  var MAIN = ["architecture", "how_many_training_steps", "learning_rate", "train_batch_size",
              "validation_percentage", "testing_percentage", "flip_left_right", "random_crop",
              "random_scale", "random_brightness"];
  var NOT_OPTIONS = ["file", "image_dir", "dataset", "name"];
  var FINISHED = ["succeeded", "failed", "cancelled"];
  var PLAIN_FILE = /^[A-Za-z0-9][A-Za-z0-9_-]{0,150}\.[A-Za-z0-9]{1,5}$/;
  var current = P.query("id"), timer = null, options = {};

  function field(name, schema) {
    var title = schema.description || name;
    var label = name.replace(/_/g, " ");
    var input;
    if (schema.type === "boolean") {
      input = el("input", {type: "checkbox", name: name, "data-option": name});
      input.checked = !!schema["default"];
      return el("label", {"class": "check", title: title}, [input, label]);
    }
    if (schema["enum"]) {
      input = el("select", {name: name, "data-option": name}, schema["enum"].map(function (value) {
        return el("option", {value: value, text: value});
      }));
      input.value = schema["default"];
    } else {
      input = el("input", {type: schema.type === "string" ? "text" : "number", name: name, "data-option": name,
                           step: schema.type === "integer" ? "1" : "any",
                           min: schema.minimum, max: schema.maximum});
      input.value = schema["default"] === undefined || schema["default"] === null ? "" : String(schema["default"]);
    }
    return el("label", {title: title}, [label, input]);
  }

  function buildForm(spec) {
    var body = ((spec.paths || {})["/retrain"] || {}).post || {};
    var content = ((body.requestBody || {}).content || {})["multipart/form-data"] || {};
    options = ((content.schema || {}).properties) || {};
    var main = document.getElementById("main-options"), more = document.getElementById("more-options");
    MAIN.forEach(function (name) { if (options[name]) { main.appendChild(field(name, options[name])); } });
    Object.keys(options).forEach(function (name) {
      if (MAIN.indexOf(name) < 0 && NOT_OPTIONS.indexOf(name) < 0) { more.appendChild(field(name, options[name])); }
    });
  }

  function changedOptions(form) {
    Array.prototype.forEach.call(document.querySelectorAll("[data-option]"), function (input) {
      var name = input.getAttribute("data-option"), schema = options[name] || {};
      var value = input.type === "checkbox" ? input.checked : input.value;
      var fallback = schema["default"];
      if (input.type !== "checkbox" && String(value) === String(fallback === undefined || fallback === null ? "" : fallback)) { return; }
      if (input.type === "checkbox" && value === !!fallback) { return; }
      form.append(name, String(value));
    });
  }

  function loadDatasets() {
    return P.api("GET", "/datasets").then(function (content) {
      var select = P.clear(document.getElementById("dataset"));
      var found = P.listOf(content, "datasets");
      if (!found.length) { select.appendChild(el("option", {value: "", text: "no dataset yet: create one"})); }
      found.forEach(function (dataset) {
        var counts = Object.keys(dataset.classes || {}).length + " classes, " + (dataset.images || 0) + " photos";
        select.appendChild(el("option", {value: dataset.name, text: dataset.name + " (" + counts + ")"}));
      });
      var wanted = P.query("dataset");
      if (wanted) { select.value = wanted; }
    });
  }

  function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

  function loadJobs() {
    return P.api("GET", "/jobs?limit=25").then(function (content) {
      var list = P.clear(document.getElementById("job-list"));
      var jobs = P.listOf(content, "jobs");
      if (!jobs.length) { list.appendChild(el("tr", {}, [el("td", {"class": "muted small", text: "No jobs yet."})])); }
      jobs.forEach(function (job) {
        list.appendChild(el("tr", {"class": "clickable" + (job.id === current ? " selected" : ""), "data-job": job.id,
                                   onclick: function () { show(job.id); }}, [
          el("td", {}, [el("div", {text: job.name + (job.version ? " v" + job.version : "")}),
                        el("div", {"class": "muted small", text: when(job.created)})]),
          el("td", {}, [P.badge(job.state)])
        ]));
      });
    });
  }

  function progressOf(job) {
    var p = job.progress || {};
    if (job.state === "succeeded") { return [1, "published version " + job.version]; }
    if (p.steps) { return [p.step / p.steps, "training: step " + p.step + " of " + p.steps]; }
    if (p.total) { return [p.done / p.total, (job.phase || "") + ": " + p.done + " of " + p.total + " images"]; }
    return [job.state === "running" ? 0.02 : 0, job.phase || job.state];
  }

  function curves(history) {
    var charts = P.clear(document.getElementById("charts"));
    if (!history || !history.length) { return; }
    function series(key) { return history.map(function (point) { return [point.step, point[key]]; }); }
    charts.appendChild(P.lineChart([
      {name: "train", color: "#2d5d7b", points: series("train_accuracy")},
      {name: "validation", color: "#d9822b", points: series("validation_accuracy")}
    ], {title: "Accuracy", yMin: 0, yMax: 1, format: function (v) { return Math.round(v * 100) + "%"; }}));
    charts.appendChild(P.lineChart([
      {name: "train", color: "#2d5d7b", points: series("cross_entropy")},
      {name: "validation", color: "#d9822b", points: series("validation_cross_entropy")}
    ], {title: "Loss (cross entropy)", yMin: 0}));
  }

  function imageId(filename) {
    if (PLAIN_FILE.test(filename)) { return filename; }
    var bytes = new TextEncoder().encode(filename), text = "";
    bytes.forEach(function (b) { text += String.fromCharCode(b); });
    return "~" + window.btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function misclassified(job) {
    var box = P.clear(document.getElementById("misclassified"));
    var wrong = ((job.result || {}).metrics || {}).misclassified || [];
    var params = job.params || {};
    var dataset = typeof params.dataset === "string" ? params.dataset : params.dataset_name || (params.dataset && params.dataset.name);
    if (!job.result) { return; }
    box.appendChild(el("h3", {text: wrong.length ? "Misclassified test images (" + wrong.length + ")" : "No test image was misclassified."}));
    var grid = el("div", {"class": "grid"});
    wrong.slice(0, 60).forEach(function (item) {
      var name = String(item.path || "").split(/[\\/]/).pop();
      // The job keeps its own copy of each listed image (item.image); older jobs fall back to the dataset.
      var src = item.image || item.thumbnail || (dataset ? "/datasets/" + P.path(dataset) + "/images/" + P.path(imageId(name)) + "/thumbnail" : null);
      var caption = item.label + " \u2192 " + item.predicted;
      grid.appendChild(el("div", {"class": "thumb", title: name + ": " + caption}, [
        src ? el("img", {src: P.root + src, alt: caption, loading: "lazy"}) : el("div", {"class": "small", style: "padding:6px", text: name}),
        el("span", {"class": "caption", text: caption})
      ]));
    });
    box.appendChild(grid);
  }

  function outcome(job) {
    var box = P.clear(document.getElementById("outcome"));
    var metrics = (job.result || {}).metrics;
    if (!metrics) { return; }
    box.appendChild(el("div", {"class": "card outcome-result"}, [
      el("h3", {style: "margin-top:0", text: "Result"}),
      el("dl", {"class": "kv"}, [
        el("dt", {text: "test accuracy"}), el("dd", {id: "test-accuracy", text: P.accuracy(metrics.test_accuracy, metrics.test_n, metrics.test_interval)}),
        el("dt", {text: "cross-validated"}), el("dd", {text: metrics.cross_validation ? P.accuracy(metrics.cross_validation.accuracy, metrics.cross_validation.n, metrics.cross_validation.interval) + ", " + metrics.cross_validation.k + "-fold" : "–"}),
        el("dt", {text: "train accuracy (last batch)"}), el("dd", {text: P.pct(metrics.train_accuracy)}),
        el("dt", {text: "validation accuracy"}), el("dd", {text: P.accuracy(metrics.validation_accuracy, metrics.validation_n, metrics.validation_interval)}),
        el("dt", {text: "version"}), el("dd", {}, [el("a", {href: P.root + "/console/models?model=" + encodeURIComponent(job.name), text: job.name + " v" + job.version})])
      ])
    ]));
    if (metrics.confusion_matrix && job.result.labels) {
      box.appendChild(el("div", {"class": "card outcome-matrix"}, [el("h3", {style: "margin-top:0", text: "Confusion matrix (test set)"}),
                                                         P.confusion(job.result.labels, metrics.confusion_matrix)]
                                                         .concat(metrics.per_class ? [P.perClass(metrics.per_class)] : [])));
    }
  }

  function render(job) {
    document.getElementById("job").hidden = false;
    document.getElementById("no-job").hidden = true;
    document.getElementById("job-title").textContent = job.name + " · job " + job.id.slice(0, 8);
    P.clear(document.getElementById("job-state")).appendChild(P.badge(job.state));
    var progress = progressOf(job);
    document.getElementById("job-progress").style.width = Math.round(progress[0] * 100) + "%";
    var p = job.progress || {};
    var live = p.train_accuracy !== undefined && job.state === "running"
      ? " · train " + P.pct(p.train_accuracy) + ", validation " + P.pct(p.validation_accuracy) : "";
    document.getElementById("job-phase").textContent = progress[1] + live;
    document.getElementById("cancel").hidden = FINISHED.indexOf(job.state) >= 0;
    var error = P.clear(document.getElementById("job-error"));
    if (job.error) { error.appendChild(el("p", {"class": "badge bad", text: job.error})); }
    curves(p.history);
    outcome(job);
    if (job.result && !document.querySelector("#misclassified h3")) { misclassified(job); }
  }

  function poll() {
    if (!current) { return; }
    var id = current;
    P.api("GET", "/jobs/" + P.path(id)).then(function (job) {
      if (id !== current) { return; }
      render(job);
      if (FINISHED.indexOf(job.state) < 0) { timer = window.setTimeout(poll, 1000); } else { loadJobs(); }
    }).catch(P.fail);
  }

  function show(id) {
    if (timer) { window.clearTimeout(timer); timer = null; }
    current = id;
    P.setQuery("id", id);
    P.clear(document.getElementById("misclassified"));
    Array.prototype.forEach.call(document.querySelectorAll("#job-list tr"), function (row) {
      row.classList.toggle("selected", row.getAttribute("data-job") === id);
    });
    poll();
  }

  document.getElementById("cancel").addEventListener("click", function () {
    P.api("DELETE", "/jobs/" + P.path(current)).then(function () { P.toast("Cancelling…"); }).catch(P.fail);
  });

  document.getElementById("retrain-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var dataset = document.getElementById("dataset").value;
    if (!dataset) { P.toast("Create a dataset with two or more classes first (Datasets page).", "error"); return; }
    var form = new FormData();
    form.append("dataset", dataset);
    form.append("name", document.getElementById("model-name").value.trim());
    changedOptions(form);
    var button = document.getElementById("start");
    button.disabled = true;
    P.api("POST", "/retrain", form).then(function (job) {
      P.toast("Job queued.");
      return loadJobs().then(function () { show(job.job_id || job.id); });
    }).catch(P.fail).then(function () { button.disabled = false; });
  });

  Promise.all([P.api("GET", "/openapi.json").then(buildForm), loadDatasets(), loadJobs()])
    .catch(P.fail).then(function () { if (current) { show(current); } });
}());
