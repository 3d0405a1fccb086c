/** Prompt templates: how an instruction (and optional input) becomes the text the model continues. */

/** A prompt template; `{instruction}` and `{input}` are substituted. */
export interface PromptTemplate {
  /** Used when the example has a non-empty input/context. */
  withInput: string;
  /** Used when the input/context is empty. */
  noInput: string;
  /** How a chat turn renders (`{role}`, `{content}`); turns are concatenated. */
  chatTurn: string;
  /** Appended after the chat turns to cue the assistant's answer. */
  chatResponsePrefix: string;
}

/** The Alpaca/Dolly style default template. */
export const ALPACA_TEMPLATE: PromptTemplate = {
  withInput: "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
  noInput: "### Instruction:\n{instruction}\n\n### Response:\n",
  chatTurn: "### {role}:\n{content}\n\n",
  chatResponsePrefix: "### assistant:\n",
};

/** Renders an instruction prompt with the template (single-pass substitution, so braces in data are safe). */
export function renderInstruction(template: PromptTemplate, instruction: string, input = ""): string {
  const t = input.trim() === "" ? template.noInput : template.withInput;
  return t.replace(/\{(instruction|input)\}/g, (_, k) => (k === "instruction" ? instruction : input));
}

/** Renders chat turns followed by the assistant cue. */
export function renderChat(template: PromptTemplate, turns: { role: string; content: string }[]): string {
  let s = "";
  for (const turn of turns) {
    s += template.chatTurn.replace(
      /\{(role|content)\}/g,
      (_, k) => (k === "role" ? turn.role : turn.content),
    );
  }
  return s + template.chatResponsePrefix;
}
