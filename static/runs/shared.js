// A shared conversation's code blocks, coloured as on the chat page when highlight.js (loaded
// before this script) knows the block's language.
"use strict";
document.querySelectorAll(".message .body pre code[class*='language-']").forEach((code) => {
  const language = [...code.classList].find((name) => name.startsWith("language-"));
  if (language && window.hljs?.getLanguage(language.slice("language-".length))) {
    window.hljs.highlightElement(code);
  }
});
