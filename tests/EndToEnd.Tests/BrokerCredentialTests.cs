using System.Globalization;
using System.Net.Sockets;
using System.Runtime.Versioning;
using System.Text;
using Aspire.Hosting;
using Aspire.Hosting.Testing;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;

namespace EventPipeline.EndToEnd.Tests;

/// <summary>
/// The brokers the AppHost starts never take default credentials: Redis answers nothing without its password, RabbitMQ
/// refuses guest/guest, and Redis's password is not on its command line, where every user of the machine can read it.
/// </summary>
[Collection(AppHostCollection.Name)]
[SupportedOSPlatform("linux")] // reads /proc, as the local-executable brokers are Debian's
public sealed class BrokerCredentialTests(AppHostFixture fixture)
{
    [Fact]
    public async Task Redis_refuses_a_client_without_the_password()
    {
        var (host, port, _) = await RedisAsync();
        using var client = new TcpClient();
        await client.ConnectAsync(host, port);
        var stream = client.GetStream();
        await stream.WriteAsync("PING\r\n"u8.ToArray());
        var buffer = new byte[256];
        var read = await stream.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(10));

        Assert.StartsWith("-NOAUTH", Encoding.ASCII.GetString(buffer, 0, read));
    }

    [Fact]
    public async Task RabbitMQ_refuses_guest_guest()
    {
        var uri = new Uri((await fixture.App.GetConnectionStringAsync("rabbitmq"))!);
        var factory = new ConnectionFactory { HostName = uri.Host, Port = uri.Port, UserName = "guest", Password = "guest" };

        var refused = await Assert.ThrowsAsync<BrokerUnreachableException>(() => factory.CreateConnectionAsync());

        Assert.IsType<AuthenticationFailureException>(refused.InnerException);
    }

    [Fact]
    public async Task Redis_password_is_not_on_the_command_line_and_its_file_is_the_owners_alone()
    {
        var (_, _, password) = await RedisAsync();
        Assert.True(fixture.App.ResourceNotifications.TryGetCurrentState("redis", out var state), "no state for redis");
        // The arguments the orchestrator started it with (also what the dashboard shows); redis-server rewrites its
        // own /proc cmdline once running, so that alone would prove nothing.
        var arguments = state!.Snapshot.Properties.Single(p => p.Name == "executable.args").Value as IEnumerable<string>;
        Assert.True(arguments is not null, string.Join("; ", state.Snapshot.Properties.Select(p => $"{p.Name}={p.Value}")));

        Assert.Contains("--appendonly", arguments);
        Assert.DoesNotContain(arguments, a => a.Contains(password, StringComparison.Ordinal));
        var authFile = Assert.Single(arguments, a => a.EndsWith("auth.conf", StringComparison.Ordinal));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(authFile));
    }

    private async Task<(string Host, int Port, string Password)> RedisAsync()
    {
        // "127.0.0.1:port,password=…" as the services receive it.
        var parts = (await fixture.App.GetConnectionStringAsync("redis"))!.Split(',');
        var endpoint = parts[0].Split(':');
        var password = parts.Single(p => p.StartsWith("password=", StringComparison.Ordinal))["password=".Length..];
        return (endpoint[0], int.Parse(endpoint[1], CultureInfo.InvariantCulture), password);
    }
}
