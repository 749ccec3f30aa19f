// Steward console: live numbers on the overview, from the server's event stream.
// Everything else works without script. Text only: values are set with textContent.
(function () {
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
