"""Generation in plain steps, for `CausalLM.generate`, `stream` and `chat`.

`options` validates the arguments into one `GenerationOptions`; `prompts`
turns inputs into one right-padded batch of ids; `layout` places prompts
for the decode loop and back; `text` decodes the results; `streaming` and
`chat` build on `generate()`.
"""
