// Postern's in-browser replay: steps through the screens the server drew from the recording
// (the same terminal emulation as the command log), with the session's timing.
(function () {
  "use strict";
  var data = document.getElementById("frames");
  var screen = document.getElementById("screen");
  var play = document.getElementById("play");
  var seek = document.getElementById("seek");
  var clock = document.getElementById("clock");
  if (!data || !screen || !play || !seek) { return; }
  var frames = JSON.parse(data.textContent || "[]");
  if (!frames.length) { return; }
  var end = frames[frames.length - 1].time;
  var pos = parseFloat(seek.value) || 0;
  var timer = null;
  // The input view: the line of keys typed last before the current position.
  var keyData = document.getElementById("keylines");
  var keyLines = keyData ? JSON.parse(keyData.textContent || "[]") : [];
  var showKeys = document.getElementById("showkeys");
  var keysOut = document.getElementById("keys");

  function keysAt(t) {
    var lo = 0, hi = keyLines.length - 1, best = -1;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (keyLines[mid].time <= t) { best = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return best < 0 ? "" : keyLines[best].keys;
  }
  var startedAt = 0, startedPos = 0;

  function fmt(t) {
    var s = Math.floor(Math.max(0, t));
    var m = Math.floor(s / 60) % 60, h = Math.floor(s / 3600);
    return h + ":" + (m < 10 ? "0" : "") + m + ":" + (s % 60 < 10 ? "0" : "") + (s % 60);
  }
  function frameAt(t) {
    var lo = 0, hi = frames.length - 1, best = 0;
    while (lo <= hi) {
      var mid = (lo + hi) >> 1;
      if (frames[mid].time <= t) { best = mid; lo = mid + 1; } else { hi = mid - 1; }
    }
    return frames[best];
  }
  function show(t) {
    pos = Math.min(Math.max(0, t), end);
    screen.textContent = frameAt(pos).lines.join("\n");
    seek.value = pos;
    clock.textContent = fmt(pos);
    if (keysOut) {
      // textContent: the keys are shown as text, never as markup.
      keysOut.textContent = showKeys && showKeys.checked ? keysAt(pos) : "";
    }
  }
  function stop() {
    if (timer) { clearInterval(timer); timer = null; }
    play.textContent = "Play";
  }
  function start() {
    if (pos >= end) { pos = 0; }
    startedAt = Date.now(); startedPos = pos;
    play.textContent = "Pause";
    timer = setInterval(function () {
      var t = startedPos + (Date.now() - startedAt) / 1000;
      show(t);
      if (t >= end) { stop(); }
    }, 50);
  }
  play.addEventListener("click", function () { if (timer) { stop(); } else { start(); } });
  if (showKeys) { showKeys.addEventListener("change", function () { show(pos); }); }
  seek.addEventListener("input", function () { stop(); show(parseFloat(seek.value) || 0); });
  document.querySelectorAll("a[data-at]").forEach(function (a) {
    a.addEventListener("click", function (ev) {
      ev.preventDefault(); stop(); show(parseFloat(a.getAttribute("data-at")) || 0);
      screen.scrollIntoView({ block: "nearest" });
    });
  });
  show(pos);
})();
