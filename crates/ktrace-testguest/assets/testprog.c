/* The seeds' test program: a tight loop of open/read/close on /dev/urandom
 * and open/write/close on /dev/null, so that _raw_spin_lock and the syscall
 * paths are hit constantly by a known pid. */
#include <fcntl.h>
#include <unistd.h>

int main(void)
{
	static char data[4096];

	for (;;) {
		int fd = open("/dev/urandom", O_RDONLY);
		if (fd >= 0) {
			if (read(fd, data, sizeof(data)) < 0)
				data[0] = 0;
			close(fd);
		}
		fd = open("/dev/null", O_WRONLY);
		if (fd >= 0) {
			if (write(fd, data, sizeof(data)) < 0)
				data[0] = 0;
			close(fd);
		}
	}
	return 0;
}
