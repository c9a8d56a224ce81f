"""Run one prompt through llama.cpp on a GGUF: `python -m modelport.samples.prompt MODEL.gguf "text"`.
The sample models have random weights, so the continuation is gibberish; what it shows is that llama.cpp loads
the converted file, tokenizes with its vocabulary and generates."""
import sys

from modelport.validators.runtimes import LlamaCpp


def main() -> None:
    path, prompt = sys.argv[1], sys.argv[2]
    llm = LlamaCpp(path)
    ids = llm.tokenize(prompt)
    print(f"prompt: {prompt!r} -> {len(ids)} tokens {ids}")
    print(f"llama.cpp continues: {llm.generate(prompt, max_tokens=16)!r}")


if __name__ == "__main__":
    main()
