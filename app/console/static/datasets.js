/* Datasets page: create datasets, a thumbnail grid per class, upload, move, delete. */
(function () {
  "use strict";
  var P = window.Poets, el = P.el;
  var PAGE = 60;  // thumbnails per class before "Show more"
  var current = P.query("name");
  var classes = {};  // label -> count
  var selected = {};  // image id -> label

  function datasetPath(rest) { return "/datasets/" + P.path(current) + (rest || ""); }

  function loadList() {
    return P.api("GET", "/datasets").then(function (content) {
      var list = P.clear(document.getElementById("dataset-list"));
      var found = P.listOf(content, "datasets");
      if (!found.length) { list.appendChild(el("li", {"class": "muted small", text: "No dataset yet."})); }
      found.forEach(function (dataset) {
        list.appendChild(el("li", {}, [el("a", {
          href: "?name=" + encodeURIComponent(dataset.name), "class": dataset.name === current ? "active" : null,
          "data-dataset": dataset.name,
          onclick: function (event) { event.preventDefault(); open(dataset.name); }
        }, [el("span", {text: dataset.name}), el("span", {"class": "muted small", text: String(dataset.images || 0)})])]));
      });
    }).catch(P.fail);
  }

  function selectionChanged() {
    var count = Object.keys(selected).length;
    document.getElementById("selected-count").textContent =
      count ? count + " selected" : "Click photos to select them.";
    document.getElementById("move-to").disabled = !count;
    document.getElementById("move").disabled = !count;
    document.getElementById("delete").disabled = !count;
  }

  function thumb(image) {
    var button = el("button", {type: "button", "class": "thumb", title: image.filename, "data-id": image.id,
                               "aria-pressed": "false"}, [
      el("img", {src: P.root + image.thumbnail, alt: image.label + " " + image.filename, loading: "lazy"})
    ]);
    button.addEventListener("click", function () {
      if (selected[image.id] !== undefined) { delete selected[image.id]; } else { selected[image.id] = image.label; }
      var on = selected[image.id] !== undefined;
      button.classList.toggle("selected", on);
      button.setAttribute("aria-pressed", on ? "true" : "false");
      selectionChanged();
    });
    return button;
  }

  function loadImages(label, grid, offset) {
    var url = datasetPath("/images?label=" + encodeURIComponent(label) + "&offset=" + offset + "&limit=" + PAGE);
    return P.api("GET", url).then(function (page) {
      page.items.forEach(function (image) { grid.appendChild(thumb(image)); });
      var shown = offset + page.items.length;
      if (shown < page.total) {
        var more = el("button", {type: "button", "class": "secondary", text: "Show more (" + (page.total - shown) + ")",
                                 onclick: function () { more.parentNode.removeChild(more); loadImages(label, grid, shown); }});
        grid.parentNode.appendChild(more);
      }
    });
  }

  function upload(label, files) {
    if (!files.length) { return Promise.resolve(); }
    var form = new FormData();
    form.append("label", label);
    Array.prototype.forEach.call(files, function (file) { form.append("files", file, file.name); });
    return P.api("POST", datasetPath("/images"), form).then(function (answer) {
      var added = (answer.images || []).filter(function (image) { return !image.duplicate; }).length;
      var dupes = (answer.images || []).length - added;
      P.toast(added + " photo(s) added to " + label + (dupes ? "; " + dupes + " already there" : "") + ".");
      return refresh();
    });
  }

  function classSection(label, count) {
    var grid = el("div", {"class": "grid", "data-class": label});
    var section = el("section", {"class": "class", "data-class": label}, [
      el("div", {"class": "class-head"}, [
        el("h3", {style: "margin:0", text: label}),
        el("span", {"class": "muted small", text: count + " photo" + (count === 1 ? "" : "s")}),
        el("span", {style: "flex:1"}),
        el("button", {type: "button", "class": "secondary", text: "Rename", onclick: function () {
          var name = window.prompt("New name for class " + label + " (an existing class merges):", label);
          if (!name || name === label) { return; }
          P.api("PATCH", datasetPath("/classes/" + P.path(label)), {label: name}).then(refresh).catch(P.fail);
        }}),
        el("button", {type: "button", "class": "danger", text: "Delete class", onclick: function () {
          if (!window.confirm("Delete class " + label + " and its " + count + " photos?")) { return; }
          P.api("DELETE", datasetPath("/classes/" + P.path(label))).then(refresh).catch(P.fail);
        }})
      ]),
      grid
    ]);
    section.addEventListener("dragover", function (event) { event.preventDefault(); grid.classList.add("over"); });
    section.addEventListener("dragleave", function () { grid.classList.remove("over"); });
    section.addEventListener("drop", function (event) {
      event.preventDefault();
      upload(label, event.dataTransfer.files).catch(P.fail);
    });
    loadImages(label, grid, 0).catch(P.fail);
    return section;
  }

  function refresh() {
    selected = {};
    selectionChanged();
    return P.api("GET", datasetPath()).then(function (dataset) {
      classes = dataset.classes || {};
      var labels = Object.keys(classes).sort();
      document.getElementById("dataset-title").textContent = dataset.name;
      document.getElementById("dataset-summary").textContent = labels.length
        ? (dataset.images || 0) + " photos in " + labels.length + " classes · fingerprint " + String(dataset.fingerprint || "").slice(0, 12)
        : "No photos yet: add some below, one class at a time (at least two classes to train).";
      var datalist = P.clear(document.getElementById("class-names"));
      var moveTo = P.clear(document.getElementById("move-to"));
      moveTo.appendChild(el("option", {value: "", text: "Move to class…"}));
      labels.forEach(function (label) {
        datalist.appendChild(el("option", {value: label}));
        moveTo.appendChild(el("option", {value: label, text: label}));
      });
      var box = P.clear(document.getElementById("classes"));
      labels.forEach(function (label) { box.appendChild(classSection(label, classes[label])); });
      return loadList();
    }).catch(P.fail);
  }

  function open(name) {
    current = name;
    P.setQuery("name", name);
    document.getElementById("dataset").hidden = false;
    document.getElementById("no-dataset").hidden = true;
    document.getElementById("export").setAttribute("href", P.root + datasetPath("/archive"));
    document.getElementById("train").setAttribute("href", P.root + "/console/jobs?dataset=" + encodeURIComponent(name));
    return refresh();
  }

  function eachSelected(action, done) {
    var ids = Object.keys(selected);
    var failures = [];
    return ids.reduce(function (chain, id) {
      return chain.then(function () { return action(id).catch(function (error) { failures.push(error.message); }); });
    }, Promise.resolve()).then(function () {
      if (failures.length) { P.toast(failures[0], "error"); } else { P.toast(done(ids.length)); }
      return refresh();
    });
  }

  document.getElementById("move").addEventListener("click", function () {
    var label = document.getElementById("move-to").value;
    if (!label) { P.toast("Pick the class to move them to.", "error"); return; }
    eachSelected(function (id) {
      return P.api("PATCH", datasetPath("/images/" + P.path(id)), {label: label});
    }, function (n) { return n + " photo(s) moved to " + label + "."; });
  });

  document.getElementById("delete").addEventListener("click", function () {
    var count = Object.keys(selected).length;
    if (!window.confirm("Delete " + count + " photo(s)?")) { return; }
    eachSelected(function (id) {
      return P.api("DELETE", datasetPath("/images/" + P.path(id)));
    }, function (n) { return n + " photo(s) deleted."; });
  });

  document.getElementById("upload-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = document.getElementById("upload-files");
    var label = document.getElementById("upload-label").value.trim();
    upload(label, input.files).then(function () { input.value = ""; }).catch(P.fail);
  });

  document.getElementById("create-form").addEventListener("submit", function (event) {
    event.preventDefault();
    var input = document.getElementById("new-name");
    var name = input.value.trim();
    P.api("POST", "/datasets", {name: name}).then(function () {
      input.value = "";
      P.toast("Dataset " + name + " created.");
      return open(name);
    }).catch(P.fail);
  });

  if (current) { open(current); } else { loadList(); }
}());
