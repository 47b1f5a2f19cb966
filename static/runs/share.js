// The share page's Copy link button.
"use strict";
const copyButton = document.getElementById("share-copy");
const linkBox = document.getElementById("share-url");
if (copyButton && linkBox) {
  linkBox.addEventListener("focus", () => linkBox.select());
  copyButton.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(linkBox.value);
      copyButton.textContent = "Copied";
    } catch {
      linkBox.select();
      copyButton.textContent = "Press Ctrl+C to copy";
    }
  });
}
