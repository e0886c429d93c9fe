/* Label page: dropped or chosen files, and camera snapshots, through POST /label. */
(function () {
  "use strict";
  var P = window.Poets, el = P.el;
  var modelSelect = document.getElementById("model");
  var results = document.getElementById("results");
  var cameraResult = document.getElementById("camera-result");
  var video = document.getElementById("video");
  var drop = document.getElementById("drop");
  var fileInput = document.getElementById("files");
  var stream = null, timer = null, busy = false;

  function labelUrl() {
    var params = ["top_k=" + encodeURIComponent(document.getElementById("top-k").value || "5")];
    if (modelSelect.value) { params.push("model=" + encodeURIComponent(modelSelect.value)); }
    if (document.getElementById("collect").checked) { params.push("collect=true"); }
    return "/label?" + params.join("&");
  }

  function resultRow(src, name, answer) {
    var caption = answer.model ? answer.model.name + " v" + answer.model.version + " · " + answer.took_ms + " ms" : "";
    return el("div", {"class": "result"}, [
      el("img", {src: src, alt: name}),
      el("div", {"class": "grow"}, [
        el("div", {"class": "small muted", text: (name ? name + " · " : "") + caption}),
        P.bars(answer.labels)
      ])
    ]);
  }

  function labelBlob(blob, name) {
    return P.api("POST", labelUrl(), blob);
  }

  function labelFiles(files) {
    Array.prototype.forEach.call(files, function (file) {
      var src = URL.createObjectURL(file);
      var slot = el("div", {"class": "result muted", text: "Labelling " + file.name + "…"});
      results.insertBefore(slot, results.firstChild);
      var form = new FormData();
      form.append("file", file, file.name);
      P.api("POST", labelUrl(), form).then(function (answer) {
        results.replaceChild(resultRow(src, file.name, answer), slot);
      }).catch(function (error) {
        slot.textContent = file.name + ": " + error.message;
        slot.className = "result";
      });
    });
  }

  drop.addEventListener("dragover", function (event) { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("over");
    labelFiles(event.dataTransfer.files);
  });
  fileInput.addEventListener("change", function () { labelFiles(fileInput.files); fileInput.value = ""; });

  function snapshot() {
    if (!stream || busy || !video.videoWidth) { return; }
    busy = true;
    var canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    canvas.toBlob(function (blob) {
      var src = canvas.toDataURL("image/jpeg", 0.7);
      labelBlob(blob, "snapshot").then(function (answer) {
        P.clear(cameraResult).appendChild(resultRow(src, "snapshot", answer));
      }).catch(P.fail).then(function () { busy = false; });
    }, "image/jpeg", 0.9);
  }

  function stopCamera() {
    if (timer) { window.clearInterval(timer); timer = null; }
    if (stream) { stream.getTracks().forEach(function (track) { track.stop(); }); stream = null; }
    video.hidden = true;
    document.getElementById("snapshot").disabled = true;
    document.getElementById("live").disabled = true;
    document.getElementById("live").checked = false;
    document.getElementById("camera-stop").hidden = true;
    document.getElementById("camera-start").hidden = false;
  }

  document.getElementById("camera-start").addEventListener("click", function () {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      P.toast("This browser gives no camera here (a camera needs https or localhost).", "error");
      return;
    }
    navigator.mediaDevices.getUserMedia({video: {width: {ideal: 640}, height: {ideal: 480}}, audio: false})
      .then(function (media) {
        stream = media;
        video.srcObject = media;
        video.hidden = false;
        document.getElementById("snapshot").disabled = false;
        document.getElementById("live").disabled = false;
        document.getElementById("camera-stop").hidden = false;
        document.getElementById("camera-start").hidden = true;
      })
      .catch(function (error) { P.toast("No camera: " + error.message, "error"); });
  });
  document.getElementById("camera-stop").addEventListener("click", stopCamera);
  document.getElementById("snapshot").addEventListener("click", snapshot);
  document.getElementById("live").addEventListener("change", function (event) {
    if (timer) { window.clearInterval(timer); timer = null; }
    if (event.target.checked) { timer = window.setInterval(snapshot, 1000); }
  });

  // The first option sends no ?model=: it names what the API serves then (its own rule, in
  // GET /models as serves_by_default), not the POETS_DEFAULT_MODEL setting, which may name no model.
  P.api("GET", "/models").then(function (content) {
    var serving = content.serves_by_default;
    var unnamed = modelSelect.options[0];
    if (serving) { unnamed.textContent = serving + " (default)"; } else { modelSelect.removeChild(unnamed); }
    P.listOf(content, "models").forEach(function (model) {
      if (model.name === serving) { return; }
      modelSelect.appendChild(el("option", {value: model.name, text: model.name}));
    });
    if (!modelSelect.options.length) { modelSelect.appendChild(el("option", {value: "", text: "no model yet"})); }
  }).catch(P.fail);
}());
