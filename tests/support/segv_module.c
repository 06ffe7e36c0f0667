/* A PKCS#11 module for the availability drills (tests/drills.rs): it forwards every call to
 * the SoftHSM2 module REAL, except that
 *  - while the file TRIGGER exists, C_Encrypt writes through a null pointer: a real
 *    segmentation fault inside the module, in the middle of a request (or of a health
 *    probe, whose canary round trip encrypts);
 *  - while the file HANG exists, C_Initialize does not return: a module hung at start.
 * Built by the test: cc -shared -fPIC -DREAL='"…"' -DTRIGGER='"…"' -DHANG='"…"' -o … -ldl */
#include <dlfcn.h>
#include <unistd.h>

typedef unsigned long CK_RV;
typedef CK_RV (*fn_t)(void);
/* CK_FUNCTION_LIST of PKCS#11 v2.40: a version, then 68 function pointers. */
typedef struct {
    unsigned char major, minor;
    fn_t f[68];
} list_t;
typedef CK_RV (*get_list_t)(list_t **);
typedef CK_RV (*encrypt_t)(unsigned long, unsigned char *, unsigned long, unsigned char *,
                           unsigned long *);

typedef CK_RV (*initialize_t)(void *);

static list_t list;
static encrypt_t real_encrypt;
static initialize_t real_initialize;

static CK_RV hang_initialize(void *args) {
    while (access(HANG, F_OK) == 0) {
        usleep(10000);
    }
    return real_initialize(args);
}

static CK_RV segv_encrypt(unsigned long s, unsigned char *in, unsigned long n,
                          unsigned char *out, unsigned long *out_len) {
    if (access(TRIGGER, F_OK) == 0) {
        *(volatile int *)0 = 0;
    }
    return real_encrypt(s, in, n, out, out_len);
}

CK_RV C_GetFunctionList(list_t **out) {
    void *h = dlopen(REAL, RTLD_NOW | RTLD_LOCAL);
    if (!h) return 5; /* CKR_GENERAL_ERROR */
    get_list_t get = (get_list_t)dlsym(h, "C_GetFunctionList");
    fn_t encrypt = (fn_t)dlsym(h, "C_Encrypt");
    fn_t initialize = (fn_t)dlsym(h, "C_Initialize");
    list_t *real = 0;
    if (!get || !encrypt || !initialize || get(&real) != 0 || !real) return 5;
    list = *real;
    for (int i = 0; i < 68; i++) {
        if (list.f[i] == encrypt) {
            real_encrypt = (encrypt_t)encrypt;
            list.f[i] = (fn_t)segv_encrypt;
        } else if (list.f[i] == initialize) {
            real_initialize = (initialize_t)initialize;
            list.f[i] = (fn_t)hang_initialize;
        }
    }
    if (!real_encrypt || !real_initialize) return 5;
    *out = &list;
    return 0;
}
