// Steward console: live numbers on the overview (from the server's event stream), the
// countdown of training locks, and a candidate constitution read from a file into its form.
// Everything else works without script. Text only: values are set with textContent.
(function () {
  // Counts down the seconds a training lock has left, from when the page was served.
  var counters = document.querySelectorAll("[data-countdown]");
  if (counters.length) {
    var start = Date.now();
    setInterval(function () {
      var elapsed = Math.floor((Date.now() - start) / 1000);
      counters.forEach(function (el) {
        el.textContent = String(Math.max(0, Number(el.getAttribute("data-countdown")) - elapsed));
      });
    }, 1000);
  }
  // A file chosen here replaces the text of the form's textarea named by data-load-into.
  document.querySelectorAll("[data-load-into]").forEach(function (input) {
    input.closest("label").hidden = false;
    input.addEventListener("change", function () {
      var file = input.files && input.files[0];
      var target = input.form && input.form.elements[input.getAttribute("data-load-into")];
      if (!file || !target) { return; }
      file.text().then(function (text) { target.value = text; });
    });
  });
  var live = document.querySelector("[data-live]");
  if (!live || !window.EventSource) { return; }
  var source = new EventSource(live.getAttribute("data-live"));
  source.addEventListener("numbers", function (event) {
    var numbers = JSON.parse(event.data);
    Object.keys(numbers).forEach(function (name) {
      var el = document.querySelector('[data-number="' + name + '"]');
      if (el) { el.textContent = numbers[name]; }
    });
  });
})();
