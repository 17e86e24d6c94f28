/* A kernel-module-like relocatable object for ktrace-symbols' tests:
 * code in .text and .init.text, an inlined helper, and a .modinfo name. */

static const char modinfo_name[] __attribute__((section(".modinfo"), used)) = "name=module_like";

volatile int counter;

static inline __attribute__((always_inline)) int bump(int by)
{
	counter += by;
	return counter * 3;
}

int mod_work(int x)
{
	int r = bump(x);
	return r + 1;
}

__attribute__((section(".init.text"))) int mod_init(void)
{
	return mod_work(2) + 5;
}
