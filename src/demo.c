/* demo.c - the built-in demo model as a qvl_source over the embedded blobs
 * (see demo_data.c for how they get into the program). */
#include "demo.h"

#define DEMO_EXTERN(sym) extern const unsigned char sym##_start[], sym##_end[];
DEMO_EXTERN(qvl_demo_config)
DEMO_EXTERN(qvl_demo_generation_config)
DEMO_EXTERN(qvl_demo_preprocessor_config)
DEMO_EXTERN(qvl_demo_tokenizer)
DEMO_EXTERN(qvl_demo_tokenizer_config)
DEMO_EXTERN(qvl_demo_chat_template)
DEMO_EXTERN(qvl_demo_model)

#define DEMO_FILE(name, sym) { name, sym##_start, 0 }
static qvl_memfile files[] = {
    DEMO_FILE("config.json", qvl_demo_config),
    DEMO_FILE("generation_config.json", qvl_demo_generation_config),
    DEMO_FILE("preprocessor_config.json", qvl_demo_preprocessor_config),
    DEMO_FILE("tokenizer.json", qvl_demo_tokenizer),
    DEMO_FILE("tokenizer_config.json", qvl_demo_tokenizer_config),
    DEMO_FILE("chat_template.jinja", qvl_demo_chat_template),
    DEMO_FILE("model.safetensors", qvl_demo_model),
};

/* Sizes are label differences, known only at link time, so they are filled
 * in here rather than in the initialiser. */
static const unsigned char *const ends[] = {
    qvl_demo_config_end, qvl_demo_generation_config_end, qvl_demo_preprocessor_config_end,
    qvl_demo_tokenizer_end, qvl_demo_tokenizer_config_end, qvl_demo_chat_template_end,
    qvl_demo_model_end,
};

const qvl_source *demo_source(void) {
    static qvl_source src;
    int n = (int)(sizeof files / sizeof files[0]);
    for (int i = 0; i < n; i++) files[i].size = (size_t)(ends[i] - files[i].data);
    src.dir = NULL;
    src.files = files;
    src.nfiles = n;
    src.label = "built-in demo model";
    return &src;
}
