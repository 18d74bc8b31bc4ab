/* INCRBYFLOAT (and INCREX BYFLOAT) exactly as Redis computes it: C long double arithmetic
 * (80-bit x87 on x86-64), parsing with Redis's string2ld (util.c) and printing with
 * ld2string(LD_STR_HUMAN).
 * No Rust type has this precision, and the point is to match Redis byte for byte, so we use
 * the same libc routines Redis uses. Called from src/value/float.rs. */
#include <ctype.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LONG_DOUBLE_CHARS (5 * 1024)

/* Redis util.c string2ld. Returns 1 on success. */
static int string2ld(const char *s, size_t slen, long double *dp) {
    char buf[MAX_LONG_DOUBLE_CHARS];
    long double value;
    char *eptr;
    if (slen == 0 || slen >= sizeof(buf)) return 0;
    memcpy(buf, s, slen);
    buf[slen] = '\0';
    errno = 0;
    value = strtold(buf, &eptr);
    if (isspace((unsigned char)buf[0]) || eptr[0] != '\0' || (size_t)(eptr - buf) != slen ||
        (errno == ERANGE && (value == HUGE_VALL || value == -HUGE_VALL || fpclassify(value) == FP_ZERO)) ||
        errno == EINVAL || isnan(value))
        return 0;
    if (dp) *dp = value;
    return 1;
}

/* Redis util.c ld2string, LD_STR_HUMAN mode. Returns the length, 0 if it does not fit. */
static size_t ld2string_human(char *buf, size_t len, long double value) {
    int n = snprintf(buf, len, "%.17Lf", value);
    if (n < 0 || (size_t)n + 1 > len) return 0;
    size_t l = (size_t)n;
    if (strchr(buf, '.') != NULL) {
        char *p = buf + l - 1;
        while (*p == '0') { p--; l--; }
        if (*p == '.') l--;
    }
    if (l == 2 && buf[0] == '-' && buf[1] == '0') { buf[0] = '0'; l = 1; }
    buf[l] = '\0';
    return l;
}

/* old (NULL = missing key, counts as 0) + incr, printed into out: INCRBYFLOAT when `bounded`
 * is 0, INCREX BYFLOAT when it is 1. INCREX keeps the result within [lo, hi] (NULL: the type's
 * limit, +-LDBL_MAX, so an infinite result is out of bounds rather than an error): a result
 * outside is refused (*refused = 1, out gets old and applied "0") or, with `saturate`, clamped
 * to the bound. `applied` (INCREX only) gets the increment actually made: incr, or bound - old
 * when clamped. The arguments are parsed before the stored value, so a bad argument errs
 * whatever is stored. Returns the length written to out, or -1: stored value not a float,
 * -2: increment not a float, -3: NaN or infinity (INCRBYFLOAT, or a NaN result), -4: out or
 * applied too small, -5: a bound not a float, -6: lo > hi. */
long tally_incrbyfloat(const char *old, size_t old_len, const char *incr, size_t incr_len,
                       int bounded, const char *lo, size_t lo_len, const char *hi, size_t hi_len,
                       int saturate, char *out, size_t out_len, char *applied,
                       size_t applied_len, long *applied_n, int *refused) {
    long double value = 0, by, min = -LDBL_MAX, max = LDBL_MAX;
    if (!string2ld(incr, incr_len, &by)) return -2;
    if (lo != NULL && !string2ld(lo, lo_len, &min)) return -5;
    if (hi != NULL && !string2ld(hi, hi_len, &max)) return -5;
    if (min > max) return -6;
    if (old != NULL && !string2ld(old, old_len, &value)) return -1;
    long double result = value + by, step = by;
    if (isnan(result)) return -3;
    if (!bounded && isinf(result)) return -3;
    *refused = 0;
    if (bounded && (result < min || result > max)) {
        if (saturate) {
            result = result < min ? min : max;
            step = result - value;
        } else {
            *refused = 1;
            result = value;
            step = 0;
        }
    }
    size_t l = ld2string_human(out, out_len, result);
    if (l == 0) return -4;
    if (bounded) {
        size_t a = ld2string_human(applied, applied_len, step);
        if (a == 0) return -4;
        *applied_n = (long)a;
    }
    return (long)l;
}

/* string2ld only, for checking an argument before any key is read. */
int tally_is_float(const char *s, size_t len) {
    return string2ld(s, len, NULL);
}
