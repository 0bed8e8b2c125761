using EventPipeline.Producer.Validation;
using EventPipeline.Shared;

namespace EventPipeline.Producer.UnitTests;

/// <summary>The allow-list rule the API and Worker.Io share: an origin is scheme, host and port, all three.</summary>
public sealed class DownstreamOriginsTests
{
    private static DownstreamOrigins Parse(string[] origins, string[]? hosts = null)
    {
        Assert.True(DownstreamOrigins.TryParse(origins, hosts ?? [], out var allowed, out var error), error);
        return allowed;
    }

    [Theory]
    [InlineData("http://localhost:5183", "http://localhost:5183/webhook", true)]
    [InlineData("http://localhost:5183/", "http://LOCALHOST:5183/a?b=c", true)]
    [InlineData("http://localhost:5183", "http://localhost:5184/webhook", false)]
    [InlineData("http://localhost:5183", "https://localhost:5183/webhook", false)]
    [InlineData("http://localhost:5183", "http://127.0.0.1:5183/webhook", false)]
    [InlineData("https://hooks.example.com", "https://hooks.example.com/x", true)]
    [InlineData("https://hooks.example.com", "https://hooks.example.com:443/x", true)]
    [InlineData("https://hooks.example.com", "https://hooks.example.com:8443/x", false)]
    [InlineData("https://hooks.example.com", "http://hooks.example.com/x", false)]
    [InlineData("https://hooks.example.com", "https://hooks.example.com.evil.net/x", false)]
    [InlineData("https://hooks.example.com:8443", "https://hooks.example.com/x", false)]
    [InlineData("http://[::1]:8080", "http://[::1]:8080/x", true)]
    [InlineData("http://[::1]:8080", "http://[::1]:9090/x", false)]
    public void Origin_entry_allows_exactly_its_scheme_host_and_port(string entry, string target, bool allowed) =>
        Assert.Equal(allowed, Parse([entry]).Allows(new Uri(target)));

    [Theory]
    [InlineData("http://localhost/x", true)]
    [InlineData("https://localhost/x", true)]
    [InlineData("http://localhost:80/x", true)]
    [InlineData("http://localhost:5183/x", false)]
    [InlineData("http://localhost:9090/x", false)]
    [InlineData("https://localhost:80/x", false)]
    public void Bare_host_of_the_older_setting_allows_the_default_ports_only(string target, bool allowed) =>
        Assert.Equal(allowed, Parse([], ["localhost"]).Allows(new Uri(target)));

    [Theory]
    [InlineData("localhost:5183")]
    [InlineData("ftp://files.example.com")]
    [InlineData("https://hooks.example.com/path")]
    [InlineData("https://hooks.example.com/?q=1")]
    [InlineData("https://user@hooks.example.com")]
    [InlineData("*")]
    [InlineData("")]
    public void Malformed_origin_entry_is_refused(string entry) =>
        Assert.False(DownstreamOrigins.TryParse([entry], [], out _, out _));

    [Theory]
    [InlineData("http://localhost")]
    [InlineData("bad host")]
    [InlineData("")]
    public void Malformed_bare_host_is_refused(string entry) =>
        Assert.False(DownstreamOrigins.TryParse([], [entry], out _, out _));

    [Fact]
    public void Api_refuses_to_start_with_a_malformed_entry() =>
        Assert.False(new DownstreamTargetOptions { AllowedOrigins = ["hooks.example.com:443"] }.TryGetOrigins(out _, out _));

    [Fact]
    public void No_entry_allows_nothing() =>
        Assert.False(Parse([]).Allows(new Uri("http://localhost/")));
}
