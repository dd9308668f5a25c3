/*
 * A Relax VM instrument that times every call the VM makes (kernels and builtins), in C so that it
 * runs on the device itself, with the VM, when the VM sits behind TVM RPC (an RPC session cannot
 * pass a client-side Python function to the remote VM).
 *
 * Built as a small shared library by sdbnn_deploy.profile (the host's C compiler, or the aarch64
 * cross compiler for a board), uploaded, and loaded with load_module; its functions are exported
 * the way TVM exports compiled functions (symbol "__tvm_ffi_" + name, TVMFFISafeCallType), so
 * `lib["sdbnn_profile_attach"]` is callable locally and through RPC alike:
 *
 *   sdbnn_profile_attach(vm_module)                               -> 0   vm_module["set_instrument"]
 *       (the instrument below); done here because RPC cannot pass a function to the remote
 *   sdbnn_profile_reset()                                         -> 0   forget all records
 *   sdbnn_profile_count()                                         -> number of records
 *   sdbnn_profile_dump(names: uint8[N, NAME_BYTES], ns: int64[N]) -> n   copy the first n <= N
 *       records (symbol, nul-padded; duration in nanoseconds) into the two tensors, in call order
 *
 * Like the libraries TVM compiles, it is not linked against libtvm_ffi: the TVMFFI* symbols resolve
 * to the copy the process has already loaded (globally, by tvm_ffi's Python package).
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <dlpack/dlpack.h>
#include <tvm/ffi/c_api.h>

enum { MAX_RECORDS = 1 << 16, NAME_BYTES = 48 };

static char names[MAX_RECORDS][NAME_BYTES];
static int64_t durations[MAX_RECORDS];
static int64_t started[MAX_RECORDS];
static int count = 0;
static int open_call = -1; /* the record of the call in progress (calls do not nest) */

static int64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void set_int(TVMFFIAny* out, int64_t v) {
  memset(out, 0, sizeof(*out));
  out->type_index = kTVMFFIInt;
  out->v_int64 = v;
}

/* Copies a string argument (small string, string object or C string) into dst, nul-terminated. */
static void copy_string(const TVMFFIAny* a, char* dst) {
  const char* data = "?";
  size_t size = 1;
  if (a->type_index == kTVMFFISmallStr) {
    data = a->v_bytes;
    size = a->small_str_len;
  } else if (a->type_index == kTVMFFIStr) {
    const TVMFFIByteArray* bytes = (const TVMFFIByteArray*)((const char*)a->v_obj + sizeof(TVMFFIObject));
    data = bytes->data;
    size = bytes->size;
  } else if (a->type_index == kTVMFFIRawStr) {
    data = a->v_c_str;
    size = strlen(data);
  }
  if (size > NAME_BYTES - 1) size = NAME_BYTES - 1;
  memcpy(dst, data, size);
  dst[size] = '\0';
}

/* The DLTensor of a tensor argument (a tensor object or a bare DLTensor pointer), or NULL. */
static DLTensor* tensor_of(const TVMFFIAny* a) {
  if (a->type_index == kTVMFFIDLTensorPtr) return (DLTensor*)a->v_ptr;
  if (a->type_index == kTVMFFITensor) return (DLTensor*)((char*)a->v_obj + sizeof(TVMFFIObject));
  return NULL;
}

static int instrument(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  (void)self;
  int64_t t = now_ns();
  if (num_args >= 3) {
    int before = args[2].v_int64 != 0;
    if (before && count < MAX_RECORDS) {
      copy_string(&args[1], names[count]);
      durations[count] = -1;
      open_call = count++;
      started[open_call] = now_ns();
    } else if (!before && open_call >= 0) {
      durations[open_call] = t - started[open_call];
      open_call = -1;
    }
  }
  set_int(result, 0); /* VMInstrumentReturnKind.NO_OP */
  return 0;
}

/* vm_module["set_instrument"](a function object around `instrument`). */
int __tvm_ffi_sdbnn_profile_attach(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  (void)self;
  if (num_args != 1 || args[0].type_index < kTVMFFIStaticObjectBegin) {
    return TVMFFIErrorSetRaisedFromCStr("TypeError", "sdbnn_profile_attach expects the VM module"), -1;
  }
  const char get_name[] = "ffi.ModuleGetFunction";
  TVMFFIByteArray get_bytes = {get_name, sizeof(get_name) - 1};
  TVMFFIObjectHandle get_function = NULL, hook = NULL;
  TVMFFIAny set_instrument, ignored;
  memset(&set_instrument, 0, sizeof(set_instrument));
  memset(&ignored, 0, sizeof(ignored));
  if (TVMFFIFunctionGetGlobal(&get_bytes, &get_function) != 0 || get_function == NULL) return -1;
  TVMFFIAny get_args[3];
  memset(get_args, 0, sizeof(get_args));
  get_args[0] = args[0];
  get_args[1].type_index = kTVMFFIRawStr;
  get_args[1].v_c_str = "set_instrument";
  get_args[2].type_index = kTVMFFIBool;
  get_args[2].v_int64 = 0;
  int rc = TVMFFIFunctionCall(get_function, get_args, 3, &set_instrument);
  TVMFFIObjectDecRef(get_function);
  if (rc != 0) return rc;
  if (set_instrument.type_index != kTVMFFIFunction) {
    return TVMFFIErrorSetRaisedFromCStr("ValueError", "the module has no set_instrument: not a Relax VM"), -1;
  }
  rc = TVMFFIFunctionCreate(NULL, instrument, NULL, &hook);
  if (rc == 0) {
    TVMFFIAny hook_arg;
    memset(&hook_arg, 0, sizeof(hook_arg));
    hook_arg.type_index = kTVMFFIFunction;
    hook_arg.v_obj = (TVMFFIObject*)hook;
    rc = TVMFFIFunctionCall(set_instrument.v_obj, &hook_arg, 1, &ignored);
    TVMFFIObjectDecRef(hook); /* the VM holds its own reference */
  }
  TVMFFIObjectDecRef(set_instrument.v_obj);
  if (rc == 0) set_int(result, 0);
  return rc;
}

int __tvm_ffi_sdbnn_profile_reset(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  (void)self, (void)args, (void)num_args;
  count = 0;
  open_call = -1;
  set_int(result, 0);
  return 0;
}

int __tvm_ffi_sdbnn_profile_count(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  (void)self, (void)args, (void)num_args;
  set_int(result, count);
  return 0;
}

int __tvm_ffi_sdbnn_profile_dump(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result) {
  (void)self;
  DLTensor* name_out = num_args >= 2 ? tensor_of(&args[0]) : NULL;
  DLTensor* ns_out = num_args >= 2 ? tensor_of(&args[1]) : NULL;
  int n = 0;
  if (name_out != NULL && ns_out != NULL && name_out->ndim == 2 && name_out->shape[1] == NAME_BYTES &&
      ns_out->ndim == 1 && ns_out->shape[0] == name_out->shape[0]) {
    n = count < ns_out->shape[0] ? count : (int)ns_out->shape[0];
    char* name_data = (char*)name_out->data + name_out->byte_offset;
    int64_t* ns_data = (int64_t*)((char*)ns_out->data + ns_out->byte_offset);
    for (int i = 0; i < n; ++i) {
      memcpy(name_data + (size_t)i * NAME_BYTES, names[i], NAME_BYTES);
      ns_data[i] = durations[i];
    }
  } else {
    n = -1; /* wrong arguments */
  }
  set_int(result, n);
  return 0;
}
