"""`arlon serve`: a web page to write a story (a prompt, or a timeline of prompts) and watch it
become a video. `session` holds the generations without the page; `app` is the Gradio page."""
