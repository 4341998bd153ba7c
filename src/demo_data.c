/* demo_data.c - the bytes of assets/demo-model/, pulled in by the assembler.
 *
 * .incbin copies each file into .rodata at build time; no generated C array,
 * no objcopy step.  QVL_DEMO_DIR is the absolute directory (set in
 * Makefile.am), and the Makefile makes this object depend on the files, so
 * changing an asset rebuilds it.  Every blob starts on a 64-byte boundary
 * because the safetensors loader reads tensors in place from it; start and
 * end labels give the size. */
#ifndef QVL_DEMO_DIR
#error "QVL_DEMO_DIR must name the demo model directory"
#endif

#define DEMO_BLOB(sym, file)                                   \
    ".pushsection .rodata\n"                                   \
    ".balign 64\n"                                             \
    ".globl " sym "_start\n"                                   \
    ".globl " sym "_end\n"                                     \
    sym "_start:\n"                                            \
    ".incbin \"" QVL_DEMO_DIR "/" file "\"\n"                  \
    sym "_end:\n"                                              \
    ".byte 0\n"                                                \
    ".popsection\n"

__asm__(
    DEMO_BLOB("qvl_demo_config", "config.json")
    DEMO_BLOB("qvl_demo_generation_config", "generation_config.json")
    DEMO_BLOB("qvl_demo_preprocessor_config", "preprocessor_config.json")
    DEMO_BLOB("qvl_demo_tokenizer", "tokenizer.json")
    DEMO_BLOB("qvl_demo_tokenizer_config", "tokenizer_config.json")
    DEMO_BLOB("qvl_demo_chat_template", "chat_template.jinja")
    DEMO_BLOB("qvl_demo_model", "model.safetensors")
);
